"""DreamerV2 actor-critic trained in imagination (Hafner et al. 2021, section 2.2).

From every posterior state of the batch (B*T starts) the actor rolls the prior forward for
`horizon` steps; rewards come from the reward head, values from the slow critic, and
lambda-returns (eq. 4) are the targets. With ``actor_grad = "dynamics"`` the actor maximises the
returns by backpropagating through the (frozen for this step) world model; the critic regresses
the returns; the slow critic copies the critic every `slow_critic_update` updates.

Tensors here are time-major: ``feat_HN F`` has H+1 imagined steps of N = B*T starts.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from diswm.config import BehaviourConfig
from diswm.models.dists import (
    TanhNormal,
    TruncNormal,
    UntruncatedNormal,
    bounded_std,
    unit_normal_nll,
)
from diswm.models.losses import lambda_return
from diswm.models.nets import MLP
from diswm.models.rssm import RSSM, State


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Temporarily set requires_grad False on modules' parameters (restored afterwards), so that
    gradients flow through them to the inputs but never accumulate in them."""
    params = [p for m in modules for p in m.parameters()]
    old = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, old, strict=True):
            p.requires_grad_(flag)


class Actor(nn.Module):
    """feat -> truncated normal on [-1, 1]^A (mean = tanh(x), std = 2 sigmoid(x/2) + 0.1)."""

    def __init__(self, feat_dim: int, action_dim: int, layers: int, units: int,
                 dist: str = "trunc_normal", min_std: float = 0.1):
        super().__init__()
        self.net = MLP(feat_dim, 2 * action_dim, layers, units)
        self.dist, self.min_std = dist, min_std

    def params(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        """The distribution's (mean, std), float32, each (..., A)."""
        mean, std = self.net(feat).chunk(2, -1)
        if self.dist in ("trunc_normal", "normal_released"):
            return torch.tanh(mean), bounded_std(std, self.min_std)
        return 5.0 * torch.tanh(mean / 5.0), nn.functional.softplus(std) + 1e-4

    def make_dist(self, mean: Tensor, std: Tensor) -> TruncNormal | TanhNormal | UntruncatedNormal:
        if self.dist == "trunc_normal":
            return TruncNormal(mean, std)
        if self.dist == "normal_released":
            return UntruncatedNormal(mean, std)
        return TanhNormal(mean, std)

    def forward(self, feat: Tensor) -> TruncNormal | TanhNormal | UntruncatedNormal:
        return self.make_dist(*self.params(feat))


class ActorCritic(nn.Module):
    def __init__(self, cfg: BehaviourConfig, feat_dim: int, action_dim: int, units: int):
        super().__init__()
        self.cfg = cfg
        self.action_dim = action_dim
        self.actor = Actor(feat_dim, action_dim, cfg.actor_layers, units, cfg.actor_dist)
        self.critic = MLP(feat_dim, 1, cfg.critic_layers, units)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)

    def update_slow_critic(self, updates: int) -> bool:
        """Copy critic -> slow critic when `updates` (done so far) is a multiple of the period."""
        if updates % self.cfg.slow_critic_update == 0:
            self.slow_critic.load_state_dict(self.critic.state_dict())
            return True
        return False

    def imagine(self, wm, start: State, horizon: int) -> dict[str, Tensor]:
        """Roll the prior forward under the actor from (N, ...) starts.

        Returns ``feat`` (H+1, N, F), ``action`` (H+1, N, A; step 0 is zeros) and the policy's
        ``mean``/``std`` (H, N, A) at feats 0..H-1. The actor sees detached features, exactly as
        DreamerV2's second actor pass over ``stop_gradient(feat[:-2])`` does, so `loss` reuses
        these outputs for the entropy (and log-probs) instead of running the actor again: the
        same values and gradients, without 15% of an update's FLOPs.
        """
        state = {k: v.detach() for k, v in start.items()}
        feats = [RSSM.feat(state)]
        actions = [torch.zeros(*feats[0].shape[:-1], self.action_dim, device=feats[0].device,
                               dtype=feats[0].dtype)]
        means, stds = [], []
        for _ in range(horizon):
            mean, std = self.actor.params(feats[-1].detach())
            action = self.actor.make_dist(mean, std).rsample()
            state = wm.rssm.img_step(state, action)
            feats.append(RSSM.feat(state))
            actions.append(action)
            means.append(mean)
            stds.append(std)
        return {"feat": torch.stack(feats, 0), "action": torch.stack(actions, 0),
                "mean": torch.stack(means, 0), "std": torch.stack(stds, 0)}

    def loss(self, wm, start: State, is_terminal_N: Tensor | None = None
             ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """(actor loss terms, critic loss terms, metrics). Call with the world model frozen
        (`frozen(wm)`): gradients then reach the actor through the dynamics but not `wm`."""
        cfg = self.cfg
        seq = self.imagine(wm, start, cfg.horizon)
        feat_HNF = seq["feat"]
        reward_HN = wm.reward(feat_HNF)[..., 0]
        disc_HN = wm.discount_mean(feat_HNF, cfg.discount)
        if wm.discount is not None and is_terminal_N is not None:
            first = cfg.discount * (1.0 - is_terminal_N.to(disc_HN.dtype))
            disc_HN = torch.cat([first[None], disc_HN[1:]], 0)
        weight_HN = torch.cumprod(torch.cat([torch.ones_like(disc_HN[:1]), disc_HN[:-1]], 0),
                                  0).detach()
        value_HN = self.slow_critic(feat_HNF)[..., 0]
        target_HN = lambda_return(reward_HN[:-1], value_HN[:-1], disc_HN[:-1], value_HN[-1],
                                  cfg.lambda_)

        # The policy at feats 0..H-2 (the actor's outputs from the rollout, see `imagine`).
        policy = self.actor.make_dist(seq["mean"][:-1], seq["std"][:-1])
        if cfg.actor_grad == "dynamics":
            objective = target_HN[1:]
        else:
            advantage = (target_HN[1:] - value_HN[:-2]).detach()  # slow critic as the baseline
            objective = policy.log_prob(seq["action"][1:-1].detach()) * advantage
        entropy = policy.entropy()
        w = weight_HN[:-2]
        actor_losses = {"policy": -(w * objective).mean(), "entropy": -(w * entropy).mean()}

        value_pred = self.critic(feat_HNF[:-1].detach())[..., 0]
        critic_nll = unit_normal_nll(value_pred, target_HN.detach(), 0)
        critic_losses = {"critic": (critic_nll * weight_HN[:-1]).mean()}
        metrics = {"imag_reward": reward_HN.mean().detach(), "return": target_HN.mean().detach(),
                   "actor_entropy": entropy.mean().detach(), "value": value_pred.mean().detach()}
        return actor_losses, critic_losses, metrics

    def actor_scales(self) -> dict[str, float]:
        return {"policy": 1.0, "entropy": self.cfg.actor_entropy}

    @staticmethod
    def critic_scales() -> dict[str, float]:
        return {"critic": 1.0}
