"""Videos of the agent: the frames it saw beside the world model's reconstruction of them.

    frames = side_by_side(truth, model, rewards)          # (T, H', W', 3) uint8
    data, suffix = encode(frames, fps=25)                  # MP4 bytes (".mp4"), or a GIF

Each frame shows the observation (64 × 64, upscaled ×4 with nearest pixels) on the left, the
model's posterior reconstruction of it on the right, and a caption with the step and the return
so far. MP4 (H.264, yuv420p) comes from imageio with imageio-ffmpeg's bundled ffmpeg; where that
is missing the video is a GIF (Pillow), which every browser and TensorBoard shows too.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

SCALE = 4
CAPTION = 16  # pixels of caption band under the frames
FPS = 25


def side_by_side(truth: np.ndarray, model: np.ndarray, rewards: np.ndarray,
                 scale: int = SCALE) -> np.ndarray:
    """(T, H, W, 3) uint8 frames and (T, H, W, 3) model means in [0, 1] -> (T, H*scale +
    caption, 2*W*scale, 3) uint8 video frames with "step t  return R" under each."""
    from PIL import Image, ImageDraw

    truth = np.asarray(truth)
    if truth.ndim != 4 or truth.shape[-1] != 3 or truth.dtype != np.uint8:
        raise ValueError(f"truth must be (T, H, W, 3) uint8, got {truth.dtype} {truth.shape}")
    model = np.asarray(model, np.float32)
    if model.shape != truth.shape:
        raise ValueError(f"model frames {model.shape} do not match the observations "
                         f"{truth.shape}")
    recon = (np.clip(model, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    pair = np.concatenate([truth, recon], axis=2)  # (T, H, 2W, 3)
    pair = pair.repeat(scale, axis=1).repeat(scale, axis=2)
    T, H, W, _ = pair.shape
    out = np.zeros((T, H + CAPTION, W, 3), np.uint8)
    out[:, :H] = pair
    returns = np.cumsum(np.asarray(rewards, np.float64))
    for t in range(T):
        band = Image.fromarray(out[t, H:])
        ImageDraw.Draw(band).text((4, 2), f"step {t}  return {returns[t]:.1f}   "
                                          "left: observation  right: model", fill=(255, 255, 255))
        out[t, H:] = np.asarray(band)
    return out


def encode(frames: np.ndarray, fps: int = FPS) -> tuple[bytes, str]:
    """Video bytes and their suffix: MP4 through imageio-ffmpeg, else GIF."""
    import tempfile

    import imageio.v2 as imageio

    try:
        import imageio_ffmpeg  # noqa: F401 - imageio's "FFMPEG" plugin needs it

        with tempfile.TemporaryDirectory(prefix="diswm-video-") as tmp:  # ffmpeg writes files
            path = Path(tmp) / "video.mp4"
            # macro_block_size 16: frame sides here are multiples of 16 (64 × 4 and a caption)
            imageio.mimwrite(path, list(frames), format="FFMPEG", fps=fps, codec="libx264",
                             pixelformat="yuv420p", macro_block_size=16)
            return path.read_bytes(), ".mp4"
    except ImportError:
        buffer = io.BytesIO()
        imageio.mimwrite(buffer, list(frames), format="GIF", duration=1000 / fps, loop=0)
        return buffer.getvalue(), ".gif"


def gif(frames: np.ndarray, fps: int = FPS) -> bytes:
    """An animated GIF of `frames` (what TensorBoard's image plugin plays)."""
    import imageio.v2 as imageio

    buffer = io.BytesIO()
    imageio.mimwrite(buffer, list(frames), format="GIF", duration=1000 / fps, loop=0)
    return buffer.getvalue()
