"""World-model diagnostics on held-out episodes: open-loop prediction images and errors.

    rec = {"image": (N, H, W, 3) uint8, "action": (N, A), "reward": (N,), "is_first": (N,)}
    windows = cut_windows(rec, length=50, count=3)            # (B, T, ...) arrays
    report = open_loop_report(wm, rec, "openloop/openloop_10000.png", title="...")
    report["openl_image_mse"], report["openl_reward_mae"]

A recording is one evaluation episode, step by step, in the replay's layout (``action`` = the
action that led to each observation, zeros on the first). The image shows, for up to 3
sequences, rows truth / model / |model - truth| (context frames are posterior reconstructions,
the rest open-loop predictions from the recorded actions) and a panel of predicted vs actual
reward. See `diswm.models.openloop` for the definitions of the errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from diswm.models.openloop import open_loop

RECORD_KEYS = ("image", "action", "reward", "is_first")
CONTEXT = 5
LENGTH = 50
COUNT = 3
DIFF_MAX = 0.5  # |diff| at or above this is drawn at the top of the colour map


def cut_windows(recording: Mapping[str, np.ndarray], length: int = LENGTH, count: int = COUNT,
                context: int = CONTEXT) -> dict[str, np.ndarray] | None:
    """Up to `count` non-overlapping windows of `length` steps, spread evenly over the
    recording (the first starts at its first step, the last ends at its end). A recording shorter than `length` gives one window of all of it; one shorter than
    `context + 1` steps gives None. Returns (B, T, ...) arrays."""
    n = len(recording["image"])
    if n < context + 1:
        return None
    length = min(length, n)
    count = max(1, min(count, n // length))
    starts = np.linspace(0, n - length, count).round().astype(int)
    out = {k: np.stack([np.asarray(recording[k])[s:s + length] for s in starts])
           for k in RECORD_KEYS}
    out["start"] = starts
    return out


def open_loop_report(wm: Any, recording: Mapping[str, np.ndarray] | None, png: str | Path | None,
                     title: str = "", *, context: int = CONTEXT, length: int = LENGTH,
                     count: int = COUNT, seed: int = 0) -> dict[str, Any] | None:
    """Open-loop prediction on windows of `recording` with world model `wm`; writes the image
    to `png` (unless None) and returns the errors ``openl_image_mse``, ``openl_reward_mae``,
    ``recon_image_mse`` (floats), ``sequences`` and ``length``. None when the recording is too
    short (fewer than context + 1 steps)."""
    windows = None if recording is None else cut_windows(recording, length, count, context)
    if windows is None:
        return None
    result = open_loop(wm, windows["image"], windows["action"], windows["reward"],
                       windows["is_first"], context, seed=seed)
    if png is not None:
        save_open_loop_png(result, windows["image"], png, title, reward=windows["reward"],
                           starts=windows["start"])
    return {"openl_image_mse": result["openl_image_mse"],
            "openl_reward_mae": result["openl_reward_mae"],
            "recon_image_mse": result["recon_image_mse"],
            "sequences": int(windows["image"].shape[0]), "length": int(windows["image"].shape[1])}


def _columns(T: int, context: int, max_cols: int = 12) -> list[int]:
    """Frame indices to show: the last context frame, every `step`-th frame, the last one."""
    step = max(1, int(np.ceil(T / max_cols)))
    cols = set(range(0, T, step)) | {context - 1, context, T - 1}
    return sorted(c for c in cols if 0 <= c < T)


def save_open_loop_png(result: Mapping[str, Any], truth_image: Any, path: str | Path,
                       title: str = "", *, reward: Any = None, starts: Any = None,
                       max_sequences: int = 3) -> Path:
    """Truth / model / |difference| rows for up to `max_sequences` sequences over a subsample
    of the T frames (the context | open-loop boundary marked), predicted vs actual reward over
    time (actual only when `reward` (B, T) is given) and the image MSE per step. `starts`
    (B,): where each sequence begins in its episode, for the labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def numpy(x: Any) -> np.ndarray:
        return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)

    truth = numpy(truth_image).astype(np.float32) / 255.0  # (B, T, H, W, C) in [0, 1]
    model = np.clip(numpy(result["model_image"]), 0.0, 1.0)
    reward_pred = numpy(result["reward_pred"])
    context = int(result["context"])
    B, T, H, W = truth.shape[:4]
    B = min(B, max_sequences)
    cols = _columns(T, context)
    gap = 2
    cmap = plt.get_cmap("magma")

    def strip(frames: np.ndarray) -> np.ndarray:  # (len(cols), H, W, 3) -> one row image
        row = np.ones((H, len(cols) * (W + gap) - gap, 3), np.float32)
        for i, f in enumerate(frames):
            row[:, i * (W + gap):i * (W + gap) + W] = f
        return row

    fig_w = max(6.5, 0.62 * len(cols) + 1.2)
    fig = plt.figure(figsize=(fig_w, 1.95 * B + 2.4), layout="constrained")
    grid = fig.add_gridspec(B + 1, 1, height_ratios=[3] * B + [2.4])
    # Where the open-loop part starts, in strip pixel coordinates.
    boundary = cols.index(context) * (W + gap) - gap / 2
    for b in range(B):
        diff = np.abs(model[b] - truth[b]).mean(-1)  # (T, H, W), 0..1
        rows = [strip(truth[b, cols]), strip(model[b, cols]),
                strip(cmap(np.clip(diff[cols] / DIFF_MAX, 0, 1))[..., :3])]
        canvas = np.concatenate([np.concatenate([r, np.ones((gap, r.shape[1], 3))], 0)
                                 for r in rows], 0)[:-gap]
        ax = fig.add_subplot(grid[b])
        ax.imshow(canvas, interpolation="nearest")
        ax.axvline(boundary, color="cyan", lw=1.5)
        ax.set_yticks([(H + gap) * i + H / 2 for i in range(3)], ["truth", "model", "|diff|"],
                      fontsize=7)
        ax.set_xticks([i * (W + gap) + W / 2 for i in range(len(cols))],
                      [str(c) for c in cols] if b == B - 1 else [], fontsize=7)
        ax.tick_params(length=0)
        where = f" (episode steps {int(starts[b])}-{int(starts[b]) + T - 1})" \
            if starts is not None else ""
        ax.set_title(f"sequence {b + 1}{where}: context (posterior) 0-{context - 1} | open loop "
                     f"{context}-{T - 1}   (|diff| colour: black 0 to yellow >= {DIFF_MAX})",
                     fontsize=7, loc="left")
    bottom = grid[B].subgridspec(1, 2, width_ratios=[2, 1])
    ax = fig.add_subplot(bottom[0])
    steps = np.arange(T)
    for b in range(B):
        color = f"C{b}"
        if reward is not None:
            ax.plot(steps, numpy(reward)[b], color=color, lw=1.2, label=f"actual {b + 1}")
        ax.plot(steps, reward_pred[b], color=color, lw=1.2, ls="--", label=f"predicted {b + 1}")
    ax.axvline(context - 0.5, color="cyan", lw=1.5)
    ax.set_xlim(0, T - 1)
    ax.set_xlabel("step in sequence", fontsize=7)
    ax.set_title("reward: actual vs predicted", fontsize=7, loc="left")
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6, ncol=B, loc="best", frameon=False)
    if "image_se_t" in result:
        ax = fig.add_subplot(bottom[1])
        ax.plot(steps, numpy(result["image_se_t"]), color="k", lw=1.2)
        ax.axvline(context - 0.5, color="cyan", lw=1.5)
        ax.set_xlim(0, T - 1)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("step in sequence", fontsize=7)
        ax.set_title("image MSE per step", fontsize=7, loc="left")
        ax.tick_params(labelsize=6)
    mse, mae = result.get("openl_image_mse"), result.get("openl_reward_mae")
    subtitle = (f"open-loop image MSE {mse:.4f}, reward MAE {mae:.3f}"
                if mse is not None and mae is not None else "")
    fig.suptitle(f"{title}\n{subtitle}".strip(), fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
