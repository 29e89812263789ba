"""Stage 1: the action-free video prediction model pretrained on distracting videos (DisWM
section 3.1) and the checkpoint helpers that hand its encoder to stage 2 as the frozen teacher.

    model = VideoModel(cfg.model, size=cfg.env.size)
    losses, _ = model.loss(image_BTHWC, is_first_BT, balance=0.8, free=1.0)
    total = combine(losses, video_scales(cfg.model, beta=cfg.pretrain.beta))

Loss (DESIGN.md section 1): image NLL of Normal(mean, 1) + KL-balanced prior/posterior KL
+ beta_2 * KL[q(z|o) || N(0, I)] summed over the z dims; every term is averaged over batch x time.

Checkpoint format (what `diswm pretrain` writes and `load_pretrained` reads): a dict saved with
``torch.save`` holding plain containers and tensors, loaded with ``weights_only=True``;
``{"video_model": VideoModel.state_dict(), ...}``. A bare state dict works too.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import Tensor, nn

from diswm.checkpoints import load_checkpoint
from diswm.config import ModelConfig
from diswm.models.dists import image_nll
from diswm.models.losses import balanced_kl, standard_normal_kl
from diswm.models.nets import BetaVAEEncoder, make_decoder, make_encoder, preprocess_image
from diswm.models.rssm import RSSM


class VideoModel(nn.Module):
    """beta-VAE encoder -> action-free RSSM -> decoder."""

    def __init__(self, cfg: ModelConfig, size: int = 64):
        super().__init__()
        self.beta_vae = cfg.encoder == "beta_vae"
        self.encoder = make_encoder(cfg, size)
        self.rssm = RSSM(embed_dim=self.encoder.out_dim, action_dim=0, stoch=cfg.stoch,
                         deter=cfg.deter, hidden=cfg.hidden, discrete=cfg.discrete)
        self.decoder = make_decoder(cfg, self.rssm.feat_dim, size)

    def loss(self, image_BTHWC: Tensor, is_first_BT: Tensor, *, balance: float,
             free: float) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        image_BTHWC = preprocess_image(image_BTHWC)  # once, for the encoder and the image loss
        if self.beta_vae:
            z_mean, z_logvar, embed_BTE = self.encoder(image_BTHWC)
        else:  # DV2-finetune's pretraining: DreamerV2's conv encoder, no bottleneck
            embed_BTE = self.encoder.embed(image_BTHWC)
        post, prior = self.rssm.observe(embed_BTE, None, is_first_BT)
        recon_BTHWC = self.decoder(RSSM.feat(post))
        kl_loss, kl_value = balanced_kl(post, prior, balance, free, self.rssm.discrete)
        losses = {"image": image_nll(recon_BTHWC, image_BTHWC), "kl": kl_loss}
        if self.beta_vae:
            losses["beta"] = standard_normal_kl(z_mean, z_logvar).mean()
        return losses, {"kl_value": kl_value, "post": post}


def video_scales(cfg: ModelConfig, *, beta: float) -> dict[str, float]:
    scales = {"image": cfg.image_scale, "kl": cfg.kl_scale}
    if cfg.encoder == "beta_vae":
        scales["beta"] = beta
    return scales


def load_pretrained(path: str | Path) -> dict[str, Tensor]:
    """The VideoModel state dict in a pretraining checkpoint (safe load, no unpickling)."""
    obj = load_checkpoint(path, "teacher checkpoint")
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    for key in ("video_model", "model"):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not any(k.startswith("encoder.") for k in state):
        raise ValueError(f"{path}: no 'encoder.*' weights; is this a pretraining checkpoint?")
    return state


def sub_state(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Entries under `prefix` ("encoder.") with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def make_teacher(cfg: ModelConfig, state: Mapping[str, Tensor], size: int = 64) -> BetaVAEEncoder:
    """The frozen teacher: the pretrained encoder in eval mode with requires_grad False.

    It is never registered in a module an optimizer sees (DESIGN.md: the released code left the
    teacher in the model optimizer and trained it)."""
    if cfg.encoder != "beta_vae":
        raise ValueError("a distillation teacher needs model.encoder=beta_vae")
    teacher = BetaVAEEncoder(cfg.cnn_depth, cfg.z_dim, size)
    try:
        teacher.load_state_dict(sub_state(state, "encoder."))
    except RuntimeError as err:
        raise ValueError("the teacher checkpoint's encoder does not fit model.encoder=beta_vae "
                         f"with z_dim={cfg.z_dim}, cnn_depth={cfg.cnn_depth} (was it pretrained "
                         f"with other model settings?): {str(err).splitlines()[0]}") from None
    teacher.eval().requires_grad_(False)
    return teacher
