"""The actors' policy: student encoder -> RSSM filter -> actor, one recurrent state per env.

    policy = Policy(cfg, action_dim=6, num_envs=4, mode="explore")
    policy.load_weights(*learner.get_weights("policy"))     # or weights from the broadcast
    obs = {"image": (4, 64, 64, 3) uint8, "is_first": (4,) bool}
    action_NA = policy(obs)                                 # float32 in [-1, 1]

``is_first`` resets that env's state and previous action (DreamerV2: the state is zeroed at the
start of an episode). ``explore`` samples z, the latent and the action; ``eval`` takes the actor's
mode and, as DreamerV2 does by default (``eval_state_mean: False``), still samples z and the
latent state; `train.eval_state_mean` takes their means instead.

``compile=True`` (`runtime.policy_compile`, the actors' setting) runs the step (image
preprocessing, encoder, RSSM filter step, actor, sampling) as one `torch.compile`d region: on the
CPU a step of the small presets' policies is mostly per-op dispatch, which the compiled code
removes (docs/bench/README.md, "Actors"). It compiles on the first call after prefill (seconds from
inductor's disk cache, 8-15 s cold on 2 cores), takes new weights in place without
recompiling, draws its random numbers from torch's global generator as the eager step does
(inductor's `fallback_random`), and runs eagerly, said once, where the compiler fails.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from diswm.config import Config
from diswm.models.behaviour import Actor
from diswm.models.compiled import Compiled
from diswm.models.nets import make_encoder
from diswm.models.rssm import RSSM

MODES = ("explore", "eval")


class Policy:
    def __init__(self, cfg: Config, action_dim: int, num_envs: int, *, mode: str = "explore",
                 device: str = "cpu", compile: bool = False, log=None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        m = cfg.model
        self.device = torch.device(device)
        self.mode = mode
        self.eval_state_mean = cfg.train.eval_state_mean
        self.num_envs, self.action_dim = num_envs, action_dim
        self.encoder = make_encoder(m, cfg.env.size)
        self.rssm = RSSM(embed_dim=self.encoder.out_dim, action_dim=action_dim, stoch=m.stoch,
                         deter=m.deter, hidden=m.hidden, discrete=m.discrete)
        self.actor = Actor(self.rssm.feat_dim, action_dim, cfg.behaviour.actor_layers, m.units,
                           cfg.behaviour.actor_dist)
        self._modules = {"wm.encoder.": self.encoder, "wm.rssm.": self.rssm,
                         "ac.actor.": self.actor}
        for module in self._modules.values():
            module.to(self.device).eval().requires_grad_(False)
        self.version = -1  # no weights loaded yet
        # Inductor's layout optimisation turns the encoder's convolutions channels-last, which
        # made DreamerV2's default-size encoder slower than eager here (5.5-5.9 ms against
        # 4.3-4.7 ms per 4-env step); without it the same step took 3.6-3.8 ms.
        self._run = Compiled(self._step, "policy step", log=log, enabled=compile,
                             options={"layout_optimization": False, "fallback_random": True})
        self.reset()

    @property
    def compile_state(self) -> str:
        """"eager" (not asked), "pending" (before the first call), "compiled" or "fallback"."""
        return self._run.state

    def reset(self) -> None:
        """Forget every env's recurrent state."""
        self.state = self.rssm.initial(self.num_envs, self.device)
        self.prev_action = torch.zeros(self.num_envs, self.action_dim, device=self.device)

    def load_weights(self, version: int, state: Mapping[str, Tensor]) -> None:
        """Load the policy subset of a learner state dict (keys "wm.encoder.", "wm.rssm.",
        "ac.actor."); extra keys (decoder, critic, ...) are ignored. All or nothing: a missing,
        unexpected or mis-shaped tensor raises ValueError naming it before anything is loaded."""
        subs = {}
        for prefix, module in self._modules.items():
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            own = module.state_dict()
            missing, extra = sorted(set(own) - set(sub)), sorted(set(sub) - set(own))
            if missing or extra:
                name = prefix + (missing or extra)[0]
                raise ValueError(f"weights version {version}: {'missing' if missing else 'unexpected'}"
                                 f" tensor {name!r}")
            for key, value in sub.items():
                if tuple(value.shape) != tuple(own[key].shape):
                    raise ValueError(f"weights version {version}: {prefix + key!r} has shape "
                                     f"{tuple(value.shape)}, the policy needs "
                                     f"{tuple(own[key].shape)}")
            subs[prefix] = sub
        for prefix, module in self._modules.items():
            module.load_state_dict(subs[prefix])
        self.version = int(version)

    @torch.no_grad()
    def __call__(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """(N, H, W, 3) uint8 images and (N,) is_first flags -> (N, A) float32 actions."""
        image = torch.as_tensor(np.asarray(obs["image"]), device=self.device)
        is_first = torch.as_tensor(np.asarray(obs["is_first"]), device=self.device).bool()
        if image.shape[0] != self.num_envs or is_first.shape != (self.num_envs,):
            raise ValueError(f"expected {self.num_envs} envs, got image {tuple(image.shape)} "
                             f"and is_first {tuple(is_first.shape)}")
        self.state, self.prev_action = self._run(image, is_first, self.state, self.prev_action)
        return self.prev_action.cpu().numpy().astype(np.float32)

    def _step(self, image: Tensor, is_first: Tensor, state: dict[str, Tensor],
              prev_action: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """One filtering step and action for every env (the region `compile` compiles)."""
        explore = self.mode == "explore"
        sample = explore or not self.eval_state_mean
        embed = self.encoder.embed(image, sample=sample)
        post, _ = self.rssm.obs_step(state, prev_action, embed, is_first, sample=sample)
        dist = self.actor(RSSM.feat(post))
        # The env's action space is [-1, 1]: a no-op for the truncated and tanh normals; the
        # released learner's untruncated normal (`normal_released`) is clipped here, and the
        # clipped action is the one the replay stores and the RSSM is fed.
        action = (dist.sample() if explore else dist.mode()).clamp(-1.0, 1.0)
        # Row-major strides, like the zeros of `reset`: the compiled step is specialised to its
        # inputs' strides, and a state of views into one tensor would compile it a second time
        # (`contiguous()` keeps a view's strides when there is one env).
        dense = {k: v.clone(memory_format=torch.contiguous_format) for k, v in post.items()}
        return dense, action
