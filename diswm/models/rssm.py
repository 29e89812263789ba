"""The RSSM of DreamerV2 (Hafner et al. 2021, section 2): Gaussian or categorical latents.

State: a dict of tensors. Gaussian (``discrete = 0``, DisWM's and the default): ``mean``, ``std``,
``stoch`` (..., S) and ``deter`` (..., D). Categorical (``discrete = K > 0``, DreamerV2's released
default, 32 groups of 32 classes): ``logit`` and ``stoch`` (..., S*K), the latter a one-hot sample
per group with straight-through gradients, and ``deter``.

    prior  p(s_t | h_t)          h_t = GRU(h_{t-1}, [s_{t-1}, a_{t-1}])       (img_step)
    post   q(s_t | h_t, e_t)     e_t = the encoder's z_t (20-d beta-VAE latent) (obs_step)

``action_dim = 0`` gives the action-free RSSM of the pretraining video model: its action input is
zero, which a bias-free action projection makes identical to having none, so the pretrained
weights load into an action-conditioned RSSM (DV2-finetune) with the action weights fresh.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diswm.models.dists import bounded_std, straight_through_onehot
from diswm.models.nets import LayerNormGRUCell
from diswm.models.precision import fp32

State = dict[str, Tensor]


class RSSM(nn.Module):
    def __init__(self, *, embed_dim: int, action_dim: int, stoch: int = 50, deter: int = 200,
                 hidden: int = 200, min_std: float = 0.1, discrete: int = 0):
        super().__init__()
        self.stoch, self.deter, self.action_dim, self.min_std = stoch, deter, action_dim, min_std
        self.discrete = discrete
        # Width of the stochastic part of the features, and of the head that parametrises it.
        self.stoch_dim = stoch * discrete if discrete else stoch
        dist_out = self.stoch_dim if discrete else 2 * stoch
        self.img_in = nn.Linear(self.stoch_dim, hidden)
        self.img_in_action = nn.Linear(action_dim, hidden, bias=False) if action_dim else None
        self.gru = LayerNormGRUCell(hidden, deter)
        self.img_out = nn.Sequential(nn.Linear(deter, hidden), nn.ELU(), nn.Linear(hidden, dist_out))
        self.obs_out = nn.Sequential(nn.Linear(deter + embed_dim, hidden), nn.ELU(),
                                     nn.Linear(hidden, dist_out))

    @property
    def feat_dim(self) -> int:
        return self.stoch_dim + self.deter

    def initial(self, batch: int, device=None, dtype=torch.float32) -> State:
        z = lambda n: torch.zeros(batch, n, device=device, dtype=dtype)  # noqa: E731
        if self.discrete:
            return {"logit": z(self.stoch_dim), "stoch": z(self.stoch_dim), "deter": z(self.deter)}
        return {"mean": z(self.stoch), "std": z(self.stoch), "stoch": z(self.stoch),
                "deter": z(self.deter)}

    @staticmethod
    def feat(state: State) -> Tensor:
        return torch.cat([state["stoch"], state["deter"]], -1)

    def _dist(self, raw: Tensor, sample: bool) -> dict[str, Tensor]:
        """The latent distribution's parameters and a draw (or its mean; for categorical
        latents, its mode) with gradients: reparameterised or straight-through."""
        if self.discrete:
            logit = fp32(raw)  # the latent distribution is float32
            groups = logit.unflatten(-1, (self.stoch, self.discrete))
            return {"logit": logit, "stoch": straight_through_onehot(groups, sample).flatten(-2)}
        mean, std = fp32(raw).chunk(2, -1)  # the latent distribution is float32
        std = bounded_std(std, self.min_std)
        stoch = mean + std * torch.randn_like(mean) if sample else mean
        return {"mean": mean, "std": std, "stoch": stoch}

    def img_step(self, prev: State, action_NA: Tensor | None, sample: bool = True) -> State:
        x = self.img_in(prev["stoch"])
        if self.img_in_action is not None:
            x = x + self.img_in_action(action_NA)
        deter = self.gru(torch.nn.functional.elu(x), prev["deter"])
        return {**self._dist(self.img_out(deter), sample), "deter": deter}

    def obs_step(self, prev: State, action_NA: Tensor | None, embed_NE: Tensor,
                 is_first_N: Tensor | None = None, sample: bool = True) -> tuple[State, State]:
        """One filtering step; state and action are zeroed where `is_first_N` (episode starts)."""
        if is_first_N is not None:
            keep = (~is_first_N.bool()).to(embed_NE.dtype)[:, None]
            prev = {k: v * keep for k, v in prev.items()}
            if action_NA is not None:
                action_NA = action_NA * keep
        prior = self.img_step(prev, action_NA, sample)
        raw = self.obs_out(torch.cat([prior["deter"], embed_NE], -1))
        post = {**self._dist(raw, sample), "deter": prior["deter"]}
        return post, prior

    def observe(self, embed_BTE: Tensor, action_BTA: Tensor | None, is_first_BT: Tensor,
                state: State | None = None, sample: bool = True) -> tuple[State, State]:
        """Filter a (B, T) sequence; returns posterior and prior states stacked to (B, T, ...)."""
        B, T = embed_BTE.shape[:2]
        if state is None:
            state = self.initial(B, embed_BTE.device, embed_BTE.dtype)
        posts, priors = [], []
        for t in range(T):
            action = action_BTA[:, t] if action_BTA is not None else None
            state, prior = self.obs_step(state, action, embed_BTE[:, t], is_first_BT[:, t], sample)
            posts.append(state)
            priors.append(prior)
        stack = lambda seq: {k: torch.stack([s[k] for s in seq], 1) for k in seq[0]}  # noqa: E731
        return stack(posts), stack(priors)
