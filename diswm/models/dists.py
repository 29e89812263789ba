"""Distributions the models output, in plain PyTorch.

* Diagonal Gaussians are kept as ``(mean, std)`` tensor pairs; the RSSM's std is
  ``2 * sigmoid(x / 2) + min_std`` (DreamerV2, continuous latents).
* Categorical latents are kept as logits; `straight_through_onehot` draws one-hot samples
  (Gumbel-max) whose gradient is that of the probabilities (DreamerV2, discrete latents).
* `TruncNormal`: the DreamerV2 actor's truncated normal on [-1, 1]
  (mean = tanh(x), std = 2 * sigmoid(x / 2) + 0.1), with reparameterised samples
  (inverse-CDF: x = mu + sigma * Phi^-1(Phi(a) + u (Phi(b) - Phi(a))), u ~ U(0, 1)), exact
  log-prob and entropy, summed over the action dimensions (an Independent distribution).
* `UntruncatedNormal`: what the authors' released learner samples from its "truncated normal"
  (`actor_dist: normal_released`; a probe, not DreamerV2): the same mean and std, but samples,
  log-probs and entropy of the plain normal, so samples fall outside [-1, 1].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def bounded_std(raw: Tensor, min_std: float = 0.1) -> Tensor:
    """DreamerV2's std transform: 2 * sigmoid(x / 2) + min_std, so std is in (min_std, 2 + min_std)."""
    return 2.0 * torch.sigmoid(raw / 2.0) + min_std


def straight_through_onehot(logit: Tensor, sample: bool = True) -> Tensor:
    """One-hot draws from Categorical(logits=logit) over the last dim (its mode when not
    `sample`), with straight-through gradients (Bengio et al. 2013; DreamerV2 eq. in section 2):
    the value is the one-hot vector, the gradient is that of softmax(logit)."""
    probs = torch.softmax(logit, -1)
    if sample:  # Gumbel-max: argmax(logit + G), G ~ Gumbel(0, 1), is an exact categorical draw
        u = torch.rand_like(logit).clamp_(torch.finfo(logit.dtype).tiny, 1.0)
        logit = logit - torch.log(-torch.log(u))
    onehot = torch.nn.functional.one_hot(logit.argmax(-1), logit.shape[-1]).to(probs.dtype)
    return onehot + (probs - probs.detach())  # exactly one-hot in value


def unit_normal_nll(mean: Tensor, target: Tensor, event_dims: int) -> Tensor:
    """-log N(target; mean, 1), summed over the last `event_dims` dims (constant included)."""
    nll = 0.5 * (target - mean).pow(2) + _LOG_SQRT_2PI
    return nll.sum(dim=tuple(range(-event_dims, 0))) if event_dims else nll


def image_nll(mean: Tensor, target: Tensor) -> Tensor:
    """`unit_normal_nll(mean, target, 3).mean()` for (..., H, W, C) images, in one fused pass.

    Images are the largest tensors of an update (50 x 50 x 64 x 64 x 3 = 31M values), and the
    per-pixel formula costs several passes over them forward and backward; ``mse_loss`` with a
    sum is one pass each way. Same value: 0.5 * sum (t - m)^2 / count + pixels * log sqrt(2 pi).
    """
    pixels = mean.shape[-3] * mean.shape[-2] * mean.shape[-1]
    count = mean.numel() // pixels
    sq = torch.nn.functional.mse_loss(mean, target, reduction="sum")
    return 0.5 * sq / count + pixels * _LOG_SQRT_2PI


def _phi(x: Tensor) -> Tensor:
    return torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _Phi(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


class TruncNormal:
    """Independent truncated normals on [low, high] over the last dim (the action dims)."""

    def __init__(self, mean: Tensor, std: Tensor, low: float = -1.0, high: float = 1.0,
                 eps: float = 1e-6):
        self.mean_, self.std = mean, std
        self.low, self.high, self.eps = low, high, eps
        self.alpha = (low - mean) / std
        self.beta = (high - mean) / std
        self.cdf_a, self.cdf_b = _Phi(self.alpha), _Phi(self.beta)
        self.Z = (self.cdf_b - self.cdf_a).clamp_min(1e-8)

    def rsample(self) -> Tensor:
        u = torch.rand_like(self.mean_)
        p = (self.cdf_a + u * self.Z).clamp(1e-6, 1 - 1e-6)
        x = self.mean_ + self.std * torch.special.ndtri(p)
        # Keep samples strictly inside the support with a straight-through clip (DreamerV2).
        clipped = x.clamp(self.low + self.eps, self.high - self.eps)
        return x + (clipped - x).detach()

    sample = rsample

    def mode(self) -> Tensor:
        return self.mean_.clamp(self.low, self.high)

    def log_prob(self, x: Tensor) -> Tensor:
        xi = (x - self.mean_) / self.std
        logp = -0.5 * xi * xi - _LOG_SQRT_2PI - torch.log(self.std) - torch.log(self.Z)
        return logp.sum(-1)

    def entropy(self) -> Tensor:
        a, b = self.alpha, self.beta
        ent = (_LOG_SQRT_2PI + 0.5 + torch.log(self.std) + torch.log(self.Z)
               + (a * _phi(a) - b * _phi(b)) / (2.0 * self.Z))
        return ent.sum(-1)


class UntruncatedNormal:
    """Independent normals N(mean, std) over the last dim, with no truncation.

    The authors' released learner (qiwang067/DisWM, from dreamer-torch) wraps its truncated
    normal in a distribution whose ``rsample`` reaches ``torch.distributions.Normal.rsample``:
    its imagined actions are plain normal draws (about 41% outside [-1, 1] at the initial std),
    and its log-prob and entropy are the normal's. The env clips what it is sent. Kept as a
    probe of why that learner does not get stuck (docs/results/cartpole_swingup-learning-proof,
    point 19); DreamerV2 and this project's default truncate."""

    def __init__(self, mean: Tensor, std: Tensor):
        self.base = torch.distributions.Normal(mean, std, validate_args=False)

    def rsample(self) -> Tensor:
        return self.base.rsample()

    sample = rsample

    def mode(self) -> Tensor:
        return self.base.mean

    def log_prob(self, x: Tensor) -> Tensor:
        return self.base.log_prob(x).sum(-1)

    def entropy(self) -> Tensor:
        return self.base.entropy().sum(-1)


class TanhNormal:
    """Gaussian squashed by tanh (DreamerV1 actor); entropy is estimated from one sample."""

    def __init__(self, mean: Tensor, std: Tensor):
        self.base = torch.distributions.Normal(mean, std)

    def rsample(self) -> Tensor:
        return torch.tanh(self.base.rsample())

    sample = rsample

    def mode(self) -> Tensor:
        return torch.tanh(self.base.mean)

    def log_prob(self, x: Tensor) -> Tensor:
        x = x.clamp(-1 + 1e-6, 1 - 1e-6)
        pre = torch.atanh(x)
        return (self.base.log_prob(pre) - torch.log1p(-x * x)).sum(-1)

    def entropy(self) -> Tensor:
        pre = self.base.rsample()
        x = torch.tanh(pre)
        return -(self.base.log_prob(pre) - torch.log1p(-x * x + 1e-6)).sum(-1)
