"""Losses as pure functions of tensors, and the combiner that applies configured scales.

Each model's ``loss(...)`` returns a dict of named scalar terms; `combine` multiplies them by a
dict of scales built from the config and asserts that the two key sets match (dreamerv3 style),
so a term can neither be silently dropped nor silently unscaled.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


def gaussian_kl(mean_p: Tensor, std_p: Tensor, mean_q: Tensor, std_q: Tensor) -> Tensor:
    """KL(N(mean_p, std_p) || N(mean_q, std_q)) for diagonal Gaussians, summed over the last dim."""
    var_ratio = (std_p / std_q).pow(2)
    t1 = ((mean_p - mean_q) / std_q).pow(2)
    return 0.5 * (var_ratio + t1 - 1 - torch.log(var_ratio)).sum(-1)


def categorical_kl(logit_p: Tensor, logit_q: Tensor, classes: int) -> Tensor:
    """KL(p || q) for groups of categoricals given by flat logits (..., S*K), K = `classes`:
    summed over the S groups (independent), so it matches `gaussian_kl`'s sum over dims."""
    log_p = torch.log_softmax(logit_p.unflatten(-1, (-1, classes)), -1)
    log_q = torch.log_softmax(logit_q.unflatten(-1, (-1, classes)), -1)
    return (log_p.exp() * (log_p - log_q)).sum((-2, -1))


def state_kl(p: Mapping[str, Tensor], q: Mapping[str, Tensor], classes: int = 0) -> Tensor:
    """KL between two RSSM latent distributions, Gaussian or (`classes` > 0) categorical."""
    if classes:
        return categorical_kl(p["logit"], q["logit"], classes)
    return gaussian_kl(p["mean"], p["std"], q["mean"], q["std"])


def balanced_kl(post: Mapping[str, Tensor], prior: Mapping[str, Tensor], balance: float,
                free: float, classes: int = 0) -> tuple[Tensor, Tensor]:
    """DreamerV2's KL balancing with free nats averaged over batch x time (Hafner et al. 2021,
    eq. 2 and Algorithm 2): returns (loss, mean KL value)::

        loss = balance       * max(mean KL(sg(post) || prior), free)    # trains the prior
             + (1 - balance) * max(mean KL(post || sg(prior)), free)    # trains the posterior

    `classes` > 0: categorical latents with that many classes per group (see `state_kl`).
    """
    sg = {k: v.detach() for k, v in post.items()}
    sp = {k: v.detach() for k, v in prior.items()}
    value = state_kl(post, sp, classes)  # KL(post || sg prior)
    value_prior = state_kl(sg, prior, classes)
    loss = (balance * torch.clamp(value_prior.mean(), min=free)
            + (1 - balance) * torch.clamp(value.mean(), min=free))
    return loss, value.detach().mean()


def standard_normal_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL[q(z|o) || N(0, I)] summed over the latent dims (the beta-VAE term, DisWM eq. 3)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def distill_kl(z_teacher: Tensor, z_student: Tensor) -> Tensor:
    """L_distill = KL(softmax(z_teacher) || softmax(z_student)) over the latent dims (DisWM
    eq. 4: sum z_disen * log(z_disen / z_task)); the teacher side carries no gradient."""
    log_p = torch.log_softmax(z_teacher.detach(), -1)
    log_q = torch.log_softmax(z_student, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def lambda_return(reward_HN: Tensor, value_HN: Tensor, discount_HN: Tensor, bootstrap_N: Tensor,
                  lambda_: float) -> Tensor:
    """TD(lambda) returns over time-major (H, N) tensors (DreamerV2 eq. 4, Algorithm 1)::

        R_H = bootstrap;  R_t = r_t + g_t * ((1 - lambda) * v_{t+1} + lambda * R_{t+1})
    """
    next_values = torch.cat([value_HN[1:], bootstrap_N[None]], 0)
    inputs = reward_HN + discount_HN * next_values * (1 - lambda_)
    out, last = [], bootstrap_N
    for t in reversed(range(reward_HN.shape[0])):
        last = inputs[t] + discount_HN[t] * lambda_ * last
        out.append(last)
    return torch.stack(out[::-1], 0)


def combine(losses: Mapping[str, Tensor], scales: Mapping[str, float]) -> Tensor:
    """sum_k scales[k] * losses[k]; the key sets must match exactly."""
    assert set(losses) == set(scales), (
        f"loss terms {sorted(losses)} do not match configured scales {sorted(scales)}")
    return sum(scales[k] * losses[k] for k in sorted(losses))
