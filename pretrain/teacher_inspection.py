"""Look inside a pretrained video model: reconstructions, latent traversals, disentanglement.

    diswm pretrain inspect RUN_DIR/teacher.pt --data DATA_DIR --out RUN_DIR/inspect

Writes into the output folder:

    reconstructions.png   pairs of rows: frames of held sequences, then the model's posterior
                          reconstructions (encoder -> RSSM filter -> decoder)
    traversal.png         one row per z dim: after a few context frames, the last frame's z mean
                          with that one dim swept from its 2nd to its 98th percentile over the
                          data (the decoder reads RSSM features, so the modified z enters as the
                          posterior step's embedding); the first column is the real frame
    metrics.json          MIG and SAP of the encoder's z mean against the ground-truth factors
                          (colours + physical state), overall and per group, with the KL of each
                          z dim to N(0, 1) (which dims are in use)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diswm.checkpoints import load_checkpoint
from diswm.config import Config, build_config
from diswm.disentanglement import disentanglement_scores
from diswm.models.nets import preprocess_image
from diswm.models.rssm import RSSM
from diswm.models.video import VideoModel, load_pretrained
from pretrain.dataset import VideoDataset


def load_video_model(path: str | Path) -> tuple[VideoModel, Config, dict[str, Any]]:
    """A VideoModel from teacher.pt or a pretrain checkpoint (config read from the file)."""
    payload = load_checkpoint(path, "video model checkpoint")
    if not isinstance(payload, dict) or "config" not in payload:
        raise ValueError(f"{path}: no 'config' in the checkpoint; pass a teacher.pt or "
                         "checkpoints/latest.pt written by `diswm pretrain train`")
    cfg = build_config(payload["config"])
    if cfg.model.encoder != "beta_vae":
        raise ValueError(f"{path}: pretrained with model.encoder={cfg.model.encoder} (the "
                         "DV2-finetune baseline); traversals and MIG/SAP need the beta-VAE's z")
    model = VideoModel(cfg.model, size=cfg.env.size)
    model.load_state_dict(load_pretrained(path))
    model.eval().requires_grad_(False)
    meta = {"updates": int(payload.get("updates", -1)), "beta": cfg.pretrain.beta}
    return model, cfg, meta


def _to_uint8(recon: torch.Tensor) -> np.ndarray:
    return ((recon.clamp(-0.5, 0.5) + 0.5) * 255).round().to(torch.uint8).numpy()


@torch.no_grad()
def encode_means(model: VideoModel, image_NHWC: np.ndarray, chunk: int = 512
                 ) -> tuple[np.ndarray, np.ndarray]:
    means, logvars = [], []
    for i in range(0, len(image_NHWC), chunk):
        m, lv, _ = model.encoder(torch.as_tensor(image_NHWC[i:i + chunk]), sample=False)
        means.append(m.numpy())
        logvars.append(lv.numpy())
    return np.concatenate(means), np.concatenate(logvars)


@torch.no_grad()
def reconstruct(model: VideoModel, image_BTHWC: np.ndarray, is_first_BT: np.ndarray) -> np.ndarray:
    image = torch.as_tensor(image_BTHWC)
    _, _, z = model.encoder(image, sample=False)
    post, _ = model.rssm.observe(z, None, torch.as_tensor(is_first_BT), sample=False)
    return _to_uint8(model.decoder(RSSM.feat(post)))


@torch.no_grad()
def traverse(model: VideoModel, context_THWC: np.ndarray, lows: np.ndarray, highs: np.ndarray,
             steps: int = 9) -> np.ndarray:
    """(Z, steps, H, W, 3): the last context frame decoded with each z dim swept."""
    image = torch.as_tensor(context_THWC)[None]
    T = image.shape[1]
    _, _, z = model.encoder(image, sample=False)
    is_first = torch.zeros(1, T, dtype=torch.bool)
    is_first[0, 0] = True
    state = None
    if T > 1:
        post, _ = model.rssm.observe(z[:, :-1], None, is_first[:, :-1], sample=False)
        state = {k: v[:, -1] for k, v in post.items()}
    Z = z.shape[-1]
    grid = z[0, -1].repeat(Z, steps, 1)  # (Z, steps, Z)
    for d in range(Z):
        grid[d, :, d] = torch.linspace(float(lows[d]), float(highs[d]), steps)
    flat = grid.reshape(Z * steps, Z)
    if state is None:
        prev = model.rssm.initial(len(flat))
        first = torch.ones(len(flat), dtype=torch.bool)
    else:
        prev = {k: v.expand(len(flat), -1) for k, v in state.items()}
        first = torch.zeros(len(flat), dtype=torch.bool)
    post, _ = model.rssm.obs_step(prev, None, flat, first, sample=False)
    out = _to_uint8(model.decoder(RSSM.feat(post)))
    return out.reshape(Z, steps, *out.shape[1:])


def _tile(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    h, w, _ = rows[0][0].shape
    cols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            canvas[y:y + h, x:x + w] = img
    return canvas


def _save_png(canvas: np.ndarray, path: Path, title: str, row_labels: list[str] | None = None,
              scale: float = 1.5) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w, _ = canvas.shape
    fig = plt.figure(figsize=(w / 100 * scale + 1.2, h / 100 * scale + 0.5), dpi=100)
    ax = fig.add_axes((1.0 / (w / 100 * scale + 1.2), 0.02, 1 - 1.1 / (w / 100 * scale + 1.2),
                       1 - 0.5 / (h / 100 * scale + 0.5)))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([])
    if row_labels:
        step = h / len(row_labels)
        ax.set_yticks([step * (i + 0.5) for i in range(len(row_labels))], row_labels, fontsize=7)
    else:
        ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    fig.savefig(path)
    plt.close(fig)


def inspect_checkpoint(checkpoint: str | Path, data: str | Path, out: str | Path, *,
                       samples: int = 10_000, seed: int = 0, context: int = 8,
                       progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    progress = progress or (lambda msg: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, cfg, meta = load_video_model(checkpoint)
    dataset = VideoDataset.load(data, with_factors=True, max_frames=samples)
    if dataset.size != cfg.env.size:
        raise ValueError(f"dataset {data} has {dataset.size}px frames, the model {cfg.env.size}px")
    rng = np.random.default_rng(seed)
    files = {}

    # Reconstructions of 4 sequences.
    length = min(16, max(n for _, n in dataset.episodes))
    batch = dataset.sample(rng, 4, length)
    recon = reconstruct(model, batch["image"], batch["is_first"])
    mse = float(((preprocess_image(torch.as_tensor(recon)) -
                  preprocess_image(torch.as_tensor(batch["image"]))) ** 2).mean())
    cols = list(range(0, length, max(1, length // 8)))[:8]
    rows = []
    for b in range(len(recon)):
        rows += [[batch["image"][b, t] for t in cols], [recon[b, t] for t in cols]]
    files["reconstructions"] = str(out / "reconstructions.png")
    _save_png(_tile(rows), out / "reconstructions.png",
              f"data (odd rows) vs posterior reconstructions (even rows); pixel MSE {mse:.4f}",
              [("data" if i % 2 == 0 else "recon") for i in range(len(rows))])
    progress(f"reconstructions: pixel MSE {mse:.4f}")

    # Encoder z means over the metric sample, and the per-dim KL to N(0, 1).
    mean, logvar = encode_means(model, dataset.image)
    kl_dim = (0.5 * (mean ** 2 + np.exp(logvar) - 1.0 - logvar)).mean(0)

    # Latent traversal after `context` frames of one episode.
    start, n = max(dataset.episodes, key=lambda e: e[1])
    ctx = min(context, n)
    frames = dataset.image[start + n // 2 - ctx // 2: start + n // 2 - ctx // 2 + ctx]
    lows, highs = np.percentile(mean, 2, axis=0), np.percentile(mean, 98, axis=0)
    trav = traverse(model, frames, lows, highs)
    rows = [[frames[-1]] + list(trav[d]) for d in range(len(trav))]
    files["traversal"] = str(out / "traversal.png")
    _save_png(_tile(rows), out / "traversal.png",
              f"latent traversal, beta_2={meta['beta']} (first column: the frame; each row sweeps "
              "one z dim from its 2nd to its 98th percentile)",
              [f"z{d} KL {kl_dim[d]:.2f}" for d in range(len(trav))])

    # Disentanglement metrics.
    scores = disentanglement_scores(mean, dataset.factors)
    report = {
        **scores, "recon_mse": mse, "checkpoint": str(checkpoint), "data": str(data),
        "task": dataset.manifest["task"], "beta": meta["beta"], "updates": meta["updates"],
        "num_samples": int(len(mean)),
        "num_factors": {k: int(v.shape[1]) for k, v in dataset.factors.items()},
        "kl_per_dim": [float(x) for x in kl_dim],
        "active_dims": int((kl_dim > 0.01).sum()), "files": files,
    }
    files["metrics"] = str(out / "metrics.json")
    (out / "metrics.json").write_text(json.dumps(report, indent=1) + "\n")
    progress(f"MIG {scores['mig']:.3f}  SAP {scores['sap']:.3f}  ({len(mean)} frames)")
    return report


__all__ = ["encode_means", "inspect_checkpoint", "load_video_model", "reconstruct", "traverse"]
