"""Stage 2/3: the online DisWM world model with latent distillation (DisWM section 3.2-3.3).

DreamerV2 world model whose encoder is a freshly initialised beta-VAE encoder (the student):
its sampled 20-d z is the RSSM's observation embedding. Loss (DESIGN.md section 1)::

    L = image NLL + beta * KL[q(z|o) || N(0, I)] + reward_scale * reward NLL
        (+ discount NLL) + alpha * balanced KL + eta * L_distill

where L_distill = KL(softmax(z_teacher) || softmax(z_student)) and z_teacher comes from the frozen
pretrained encoder (held by the learner, outside this module and outside every optimizer).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from diswm.config import DistillConfig, ModelConfig
from diswm.models.dists import image_nll, unit_normal_nll
from diswm.models.losses import balanced_kl, distill_kl, standard_normal_kl
from diswm.models.nets import MLP, make_decoder, make_encoder, preprocess_image
from diswm.models.rssm import RSSM, State


def eta_at(step: int, cfg: DistillConfig) -> float:
    """Distillation weight at agent step `step` (DESIGN.md section 1, with the released bug fixed:
    the schedule really anneals)::

        eta = 0                                                          if step < start_step
        eta = eta_init * max(1 - (step - start_step) / decay_steps, eta_min_frac)   otherwise

    Defaults: 0.1 -> 0.01 over 50k agent steps; Pusher: start 50k, decay over the next 45k.
    """
    if not cfg.enabled or step < cfg.start_step:
        return 0.0
    return cfg.eta_init * max(1.0 - (step - cfg.start_step) / cfg.decay_steps, cfg.eta_min_frac)


class WorldModel(nn.Module):
    def __init__(self, cfg: ModelConfig, action_dim: int, size: int = 64):
        super().__init__()
        self.cfg = cfg
        self.encoder = make_encoder(cfg, size)
        self.rssm = RSSM(embed_dim=self.encoder.out_dim, action_dim=action_dim, stoch=cfg.stoch,
                         deter=cfg.deter, hidden=cfg.hidden, discrete=cfg.discrete)
        feat = self.rssm.feat_dim
        self.decoder = make_decoder(cfg, feat, size)
        self.reward = MLP(feat, 1, cfg.reward_layers, cfg.units)
        self.discount = MLP(feat, 1, cfg.reward_layers, cfg.units) if cfg.discount_head else None

    def embed(self, image: Tensor, sample: bool = True) -> Tensor:
        """Frames (..., H, W, C), uint8 or preprocessed, -> the RSSM's observation embedding
        (..., E): the student encoder's z (sampled, or its mean with `sample=False`), or
        DreamerV2's conv features."""
        return self.encoder.embed(image, sample=sample)

    def loss(self, batch: Mapping[str, Tensor], *, z_teacher_BTZ: Tensor | None = None,
             distill_reduction: str = "batchmean") -> tuple[dict[str, Tensor], dict]:
        """Named loss terms (each a scalar averaged over batch x time) and auxiliaries.

        batch: image_BTHWC uint8 (or float from `preprocess_image`), action_BTA (the action that led to each obs), reward_BT,
        is_first_BT, is_terminal_BT. `z_teacher_BTZ`: the teacher's latent, or None (no term).
        """
        cfg = self.cfg
        image = batch["image"]  # uint8, or already preprocessed (the learner shares it)
        if image.dtype == torch.uint8:
            image = preprocess_image(image)  # once, for the encoder and the image loss
        beta_vae = self.cfg.encoder == "beta_vae"
        if beta_vae:
            z_mean, z_logvar, embed_BTE = self.encoder(image)
        else:
            embed_BTE = self.encoder.embed(image)
        post, prior = self.rssm.observe(embed_BTE, batch["action"], batch["is_first"])
        feat_BTF = RSSM.feat(post)
        recon = self.decoder(feat_BTF)
        losses = {
            "image": image_nll(recon, image),
            "reward": unit_normal_nll(self.reward(feat_BTF)[..., 0], batch["reward"], 0).mean(),
        }
        if beta_vae:
            losses["beta"] = standard_normal_kl(z_mean, z_logvar).mean()
        losses["kl"], kl_value = balanced_kl(post, prior, cfg.kl_balance, cfg.kl_free,
                                               self.rssm.discrete)
        if self.discount is not None:
            target = 1.0 - batch["is_terminal"].float()
            logits = self.discount(feat_BTF)[..., 0]
            losses["discount"] = nn.functional.binary_cross_entropy_with_logits(logits, target)
        if z_teacher_BTZ is not None:
            per_step_BT = distill_kl(z_teacher_BTZ, embed_BTE)
            # "batchmean" reproduces the released F.kl_div(reduction="batchmean") on (B, T, Z):
            # summed over time, averaged over the batch only.
            losses["distill"] = (per_step_BT.sum(1).mean() if distill_reduction == "batchmean"
                                 else per_step_BT.mean())
        aux = {"post": {k: v.detach() for k, v in post.items()}, "kl_value": kl_value}
        if beta_vae:
            aux["z_std"] = torch.exp(0.5 * z_logvar).mean().detach()
        if z_teacher_BTZ is not None:
            aux["z_student"] = embed_BTE  # for the distillation term's share of the gradient
        return losses, aux

    def scales(self, *, eta: float | None) -> dict[str, float]:
        """Loss scales from the config; `eta=None` means no distillation term is computed."""
        cfg = self.cfg
        scales = {"image": cfg.image_scale, "reward": cfg.reward_scale, "kl": cfg.kl_scale}
        if cfg.encoder == "beta_vae":
            scales["beta"] = cfg.beta
        if self.discount is not None:
            scales["discount"] = cfg.discount_scale
        if eta is not None:
            scales["distill"] = eta
        return scales

    def discount_mean(self, feat: Tensor, gamma: float) -> Tensor:
        """Predicted discount (gamma * P[not terminal]) or the constant gamma without a head."""
        if self.discount is None:
            return torch.full(feat.shape[:-1], gamma, device=feat.device, dtype=feat.dtype)
        return gamma * torch.sigmoid(self.discount(feat)[..., 0])

    def imagine_start(self, post: State) -> State:
        """Flatten posterior (B, T, ...) states into (B*T, ...) imagination starts."""
        return {k: v.reshape(-1, v.shape[-1]) for k, v in post.items()}
