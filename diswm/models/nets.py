"""Building blocks: MLP, LayerNorm GRU cell, the beta-VAE image encoder and the image decoder.

Image conventions: uint8 frames ``image_BTHWC`` in [0, 255] become floats ``x / 255 - 0.5``
(DreamerV2) and channels-first inside the conv stacks. Sizes follow DESIGN.md section 1 with
``d = model.cnn_depth`` (32 by default): four stride-2 4x4 convs 3 -> d -> d -> 2d -> 2d, a
(size/16)x(size/16) conv to ``8d`` channels (256 at d = 32, the beta-VAE paper's 256), then a
linear layer to the mean and log-variance of the ``z_dim``-d latent (Higgins et al. 2017,
Burgess et al. 2018 architecture). ELU activations throughout (DreamerV2's choice).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diswm.models import fastconv
from diswm.models.precision import fp32


def kaiming_init(module: nn.Module) -> None:
    """Kaiming-normal weights and zero biases for Linear and Conv2d layers (the beta-VAE's init,
    as released: its `kaiming_init` leaves ConvTranspose2d at PyTorch's default init)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def preprocess_image(image: Tensor) -> Tensor:
    """uint8 (..., H, W, C) -> float (..., H, W, C) in [-0.5, 0.5] (in place after the cast:
    images are the largest tensors of an update)."""
    return image.float().div_(255.0).sub_(0.5)


class MLP(nn.Module):
    """`layers` x (Linear(units) + ELU), then a Linear to `out_dim` (DreamerV2 heads)."""

    def __init__(self, in_dim: int, out_dim: int, layers: int, units: int):
        super().__init__()
        mods: list[nn.Module] = []
        for i in range(layers):
            mods += [nn.Linear(in_dim if i == 0 else units, units), nn.ELU()]
        mods.append(nn.Linear(units if layers else in_dim, out_dim))
        self.net = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        # Every MLP head feeds a distribution or a loss: its output is float32 (precision.py).
        return fp32(self.net(x))


class LayerNormGRUCell(nn.Module):
    """DreamerV2's GRU cell: one bias-free Linear on [input, state] -> 3 * size, LayerNorm, then
    reset, candidate, update gates with an update bias of -1."""

    def __init__(self, in_dim: int, size: int, update_bias: float = -1.0):
        super().__init__()
        self.linear = nn.Linear(in_dim + size, 3 * size, bias=False)
        self.norm = nn.LayerNorm(3 * size)
        self.update_bias = update_bias

    def forward(self, x_NI: Tensor, h_ND: Tensor) -> Tensor:
        parts = self.norm(self.linear(torch.cat([x_NI, h_ND], -1)))
        reset, cand, update = parts.chunk(3, -1)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update + self.update_bias)
        return update * cand + (1 - update) * h_ND


class BetaVAEEncoder(nn.Module):
    """Image -> (z mean, z log-variance, z sample), each (..., z_dim). DisWM's posterior q(z|o)."""

    def __init__(self, depth: int, z_dim: int, size: int = 64):
        super().__init__()
        if size % 16:
            raise ValueError(f"image size {size} must be a multiple of 16")
        d = depth
        self.embed_dim = 8 * d
        self.convs = nn.Sequential(
            fastconv.Conv2d(3, d, 4, 2, 1), nn.ELU(),
            fastconv.Conv2d(d, d, 4, 2, 1), nn.ELU(),
            fastconv.Conv2d(d, 2 * d, 4, 2, 1), nn.ELU(),
            fastconv.Conv2d(2 * d, 2 * d, 4, 2, 1), nn.ELU(),
            fastconv.Conv2d(2 * d, 8 * d, size // 16, 1), nn.ELU(),  # -> (8d, 1, 1)
        )
        self.head = nn.Linear(8 * d, 2 * z_dim)
        self.z_dim = z_dim
        self.channels_last = False
        kaiming_init(self)

    def forward(self, image: Tensor, sample: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """`image`: uint8 (..., H, W, C) frames, or the same already through `preprocess_image`
        (the world model shares that tensor with its image loss)."""
        lead = image.shape[:-3]
        x_NHWC = image.reshape(-1, *image.shape[-3:])
        if x_NHWC.dtype == torch.uint8:
            x_NHWC = preprocess_image(x_NHWC)
        # (N, H, W, C) permuted to NCHW is already channels-last in memory; contiguous() would
        # copy it to NCHW, which only the NCHW layout wants.
        x_NCHW = x_NHWC.permute(0, 3, 1, 2)
        if not self.channels_last:
            x_NCHW = x_NCHW.contiguous()
        h_NE = self.convs(x_NCHW).flatten(1)
        mean, logvar = fp32(self.head(h_NE)).chunk(2, -1)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if sample else mean
        return (mean.reshape(*lead, -1), logvar.reshape(*lead, -1), z.reshape(*lead, -1))

    @property
    def out_dim(self) -> int:
        """Size of the observation embedding the RSSM sees: the z."""
        return self.z_dim

    def embed(self, image: Tensor, sample: bool = True) -> Tensor:
        """The RSSM's observation embedding: z sampled from q(z|o), or its mean."""
        return self.forward(image, sample=sample)[2]


class ImageDecoder(nn.Module):
    """Features (..., F) -> pixel means (..., H, W, 3) of Normal(mean, 1) (DESIGN.md section 1):
    Linear(F -> z_dim) -> ELU -> Linear(z_dim -> 8d) -> transposed convs mirroring the encoder."""

    def __init__(self, feat_dim: int, depth: int, z_dim: int, size: int = 64):
        super().__init__()
        d = depth
        self.fc = nn.Sequential(nn.Linear(feat_dim, z_dim), nn.ELU(), nn.Linear(z_dim, 8 * d), nn.ELU())
        self.deconvs = nn.Sequential(
            fastconv.ConvTranspose2d(8 * d, 2 * d, size // 16, 1), nn.ELU(),
            fastconv.ConvTranspose2d(2 * d, 2 * d, 4, 2, 1), nn.ELU(),
            fastconv.ConvTranspose2d(2 * d, d, 4, 2, 1), nn.ELU(),
            fastconv.ConvTranspose2d(d, d, 4, 2, 1), nn.ELU(),
            fastconv.ConvTranspose2d(d, 3, 4, 2, 1),
        )
        self.channels_last = False
        kaiming_init(self)

    def forward(self, feat: Tensor) -> Tensor:
        lead = feat.shape[:-1]
        h = self.fc(feat.reshape(-1, feat.shape[-1]))[:, :, None, None]
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        mean_NCHW = fp32(self.deconvs(h))
        return mean_NCHW.permute(0, 2, 3, 1).reshape(*lead, *mean_NCHW.shape[-2:], 3)


def _glorot(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases: DreamerV2's (Keras) default initialisation."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ConvEncoder(nn.Module):
    """DreamerV2's image encoder (Hafner et al. 2021; the DreamerV2 and DV2-finetune baselines):
    four 4x4 stride-2 'valid' convs with depths d, 2d, 4d, 8d and ELU, flattened: 64x64 frames
    -> 8d x 2 x 2 = 1024 features at d = 32. No bottleneck, no distribution."""

    def __init__(self, depth: int, size: int = 64):
        super().__init__()
        if size != 64:
            raise ValueError(f"model.encoder=conv (DreamerV2's) needs 64x64 frames, got {size}")
        d = depth
        self.convs = nn.Sequential(
            fastconv.Conv2d(3, d, 4, 2), nn.ELU(),
            fastconv.Conv2d(d, 2 * d, 4, 2), nn.ELU(),
            fastconv.Conv2d(2 * d, 4 * d, 4, 2), nn.ELU(),
            fastconv.Conv2d(4 * d, 8 * d, 4, 2), nn.ELU(),  # -> (8d, 2, 2)
        )
        self.depth = d
        self.channels_last = False
        _glorot(self)

    @property
    def out_dim(self) -> int:
        return 32 * self.depth

    def embed(self, image: Tensor, sample: bool = True) -> Tensor:
        """(..., H, W, C) frames (uint8 or preprocessed) -> (..., 32d) features (`sample` is
        accepted for the encoders' common interface; there is nothing to sample)."""
        lead = image.shape[:-3]
        x_NHWC = image.reshape(-1, *image.shape[-3:])
        if x_NHWC.dtype == torch.uint8:
            x_NHWC = preprocess_image(x_NHWC)
        x_NCHW = x_NHWC.permute(0, 3, 1, 2)
        if not self.channels_last:
            x_NCHW = x_NCHW.contiguous()
        # Flatten in (C, H, W) order whatever the memory layout, as DreamerV2 reshapes NHWC.
        h = self.convs(x_NCHW).permute(0, 2, 3, 1).reshape(x_NCHW.shape[0], -1)
        return fp32(h).reshape(*lead, -1)


class ConvDecoder(nn.Module):
    """DreamerV2's image decoder from the model state: Linear(feat -> 32d), as a 1x1 map, then
    transposed convs with kernels 5, 5, 6, 6 (stride 2) and depths 4d, 2d, d, 3 with ELU between:
    1 -> 5 -> 13 -> 30 -> 64 pixels. Output: pixel means (..., 64, 64, 3) of Normal(mean, 1)."""

    def __init__(self, feat_dim: int, depth: int, size: int = 64):
        super().__init__()
        if size != 64:
            raise ValueError(f"model.encoder=conv (DreamerV2's decoder) needs 64x64 frames, "
                             f"got {size}")
        d = depth
        self.fc = nn.Linear(feat_dim, 32 * d)
        self.deconvs = nn.Sequential(
            fastconv.ConvTranspose2d(32 * d, 4 * d, 5, 2), nn.ELU(),
            fastconv.ConvTranspose2d(4 * d, 2 * d, 5, 2), nn.ELU(),
            fastconv.ConvTranspose2d(2 * d, d, 6, 2), nn.ELU(),
            fastconv.ConvTranspose2d(d, 3, 6, 2),
        )
        self.channels_last = False
        _glorot(self)

    def forward(self, feat: Tensor) -> Tensor:
        lead = feat.shape[:-1]
        h = self.fc(feat.reshape(-1, feat.shape[-1]))[:, :, None, None]
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        mean_NCHW = fp32(self.deconvs(h))
        return mean_NCHW.permute(0, 2, 3, 1).reshape(*lead, *mean_NCHW.shape[-2:], 3)


ENCODERS = ("beta_vae", "conv")


def make_encoder(cfg, size: int = 64) -> BetaVAEEncoder | ConvEncoder:
    """`model.encoder`: "beta_vae" (DisWM's 20-d z) or "conv" (DreamerV2's 1024-d features)."""
    if cfg.encoder == "conv":
        return ConvEncoder(cfg.cnn_depth, size)
    return BetaVAEEncoder(cfg.cnn_depth, cfg.z_dim, size)


def make_decoder(cfg, feat_dim: int, size: int = 64) -> ImageDecoder | ConvDecoder:
    """The decoder that goes with `model.encoder` (DESIGN.md section 1)."""
    if cfg.encoder == "conv":
        return ConvDecoder(feat_dim, cfg.cnn_depth, size)
    return ImageDecoder(feat_dim, cfg.cnn_depth, cfg.z_dim, size)


def resolve_device(name: str) -> torch.device:
    """`train.device` -> a torch device ("auto": CUDA when present, else CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
