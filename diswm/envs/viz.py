"""Frames a person can look at: PNG grids and GIFs of distracted rollouts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from diswm.envs.core import DistractedEnv


def rollout_frames(env: DistractedEnv, frames: int, every: int, seed: int) -> list[np.ndarray]:
    """`frames` images `every` agent steps apart from a uniform-random policy (new episode, new
    colours, when one ends)."""
    rng = np.random.default_rng(seed)
    out = []
    obs = env.reset()
    while len(out) < frames:
        out.append(obs["image"])
        for _ in range(every):
            if obs["is_last"]:
                obs = env.reset()
                break
            obs = env.step(rng.uniform(-1.0, 1.0, env.act_space.shape))
    return out


def grid(images: list[np.ndarray], scale: int = 1, pad: int = 2) -> np.ndarray:
    """Tile (H, W, 3) images into a near-square grid with white padding."""
    n = len(images)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w, _ = images[0].shape
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        canvas[y:y + h, x:x + w] = img
    return canvas.repeat(scale, 0).repeat(scale, 1) if scale > 1 else canvas


def write_frames(images: list[np.ndarray], out: str | Path, scale: int = 2, fps: int = 15) -> Path:
    """Write a PNG grid (``.png``) or an animation (``.gif``) of `images`."""
    import imageio.v3 as iio

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".png", ".gif"):
        raise ValueError(f"--out {out}: the file must end in .png or .gif")
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        iio.imwrite(out, grid(images, scale))
    else:
        big = [img.repeat(scale, 0).repeat(scale, 1) for img in images]
        iio.imwrite(out, np.stack(big), duration=int(1000 / fps), loop=0)
    return out
