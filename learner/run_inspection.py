"""`diswm inspect RUN`: a run's eval history and its world model's open-loop prediction.

    diswm inspect runs/x [--checkpoint PATH] [--episodes 1] [--out runs/x/inspect] [--seed S]

Loads the run's learner checkpoint (``RUN/checkpoints/latest.pt`` by default, with
``weights_only=True``), plays `episodes` held-out eval episodes with the eval-mode policy in the
run's env and the checkpoint's colour scheme, runs the open-loop diagnostic of
`diswm.diagnostics` on the first one, writes its image into `out`, and returns the numbers with
the run's eval history (``RUN/eval.csv``) for `format_report`.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from diswm.atomic import atomic_write
from diswm.checkpoints import CheckpointSet
from diswm.diagnostics import CONTEXT, open_loop_report
from diswm.runfolder import CHECKPOINT
from learner.evaluator import episode_video, evaluate_recorded
from learner.learner import Learner

HISTORY_COLUMNS = ("env_steps", "updates", "scheme", "return_mean", "openl_image_mse",
                   "openl_reward_mae")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def read_history(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "eval.csv"
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def inspect_run(run_dir: str | Path, *, checkpoint: str | Path | None = None, episodes: int = 1,
                out: str | Path | None = None, seed: int | None = None,
                log: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """Evaluate a run's checkpoint on held-out episodes with the open-loop diagnostic.

    Raises ValueError (one line, naming the path) for a missing run folder or checkpoint."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: no such run folder")
    ckpt = Path(checkpoint) if checkpoint is not None else run_dir / CHECKPOINT
    if not ckpt.is_file():
        raise ValueError(f"{ckpt}: no such checkpoint")
    if episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {episodes}")
    learner, extra = Learner.from_checkpoint(ckpt, log=log)
    cfg = learner.cfg
    env_steps = extra.get("counters", {}).get("env_steps") if isinstance(extra, dict) else None
    label = str(int(env_steps)) if env_steps is not None else f"update{learner.updates}"
    seed = cfg.train.seed + 20_000 if seed is None else seed
    log(f"inspect: {ckpt} ({learner.updates} updates, scheme {learner.scheme}): "
        f"{episodes} eval episode(s) of {cfg.env.task}, seed {seed}")
    returns, recording = evaluate_recorded(cfg, learner, episodes, learner.scheme, seed)
    out_dir = Path(out) if out is not None else run_dir / "inspect"
    png = out_dir / f"openloop_{label}.png"
    report = open_loop_report(
        learner.wm, recording, png,
        f"{cfg.env.task}, checkpoint {ckpt.name} ({learner.updates} updates, "
        f"env step {env_steps if env_steps is not None else '?'}), scheme {learner.scheme}")
    return {"run_dir": str(run_dir), "checkpoint": str(ckpt), "task": cfg.env.task,
            "updates": learner.updates, "env_steps": env_steps, "scheme": learner.scheme,
            "returns": returns, "return_mean": float(np.mean(returns)),
            "episode_steps": int(len(recording["image"])),
            "open_loop": report, "png": str(png) if report is not None else None,
            "history": read_history(run_dir)}


def _cell(value: Any, fmt: str) -> str:
    if value in (None, ""):
        return "-"
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return str(value)


def format_report(result: dict[str, Any]) -> str:
    """The eval history and the checkpoint's open-loop numbers as a short plain-text table."""
    fmts = {"env_steps": ".0f", "updates": ".0f", "scheme": "", "return_mean": ".1f",
            "openl_image_mse": ".5f", "openl_reward_mae": ".4f"}
    heads = {"env_steps": "env_steps", "updates": "updates", "scheme": "scheme",
             "return_mean": "return", "openl_image_mse": "openl_image_mse",
             "openl_reward_mae": "openl_reward_mae"}
    rows = [[_cell(r.get(c), fmts[c]) for c in HISTORY_COLUMNS] for r in result["history"]]
    ol = result["open_loop"] or {}
    rows.append([_cell(result["env_steps"], ".0f"), _cell(result["updates"], ".0f"),
                 result["scheme"], _cell(result["return_mean"], ".1f"),
                 _cell(ol.get("openl_image_mse"), ".5f"), _cell(ol.get("openl_reward_mae"), ".4f")])
    header = [heads[c] for c in HISTORY_COLUMNS]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    lines = [f"run {result['run_dir']} ({result['task']})",
             f"eval history ({result['run_dir']}/eval.csv):" if result["history"]
             else "eval history: none (no eval.csv)", line(header)]
    lines += [line(r) for r in rows[:-1]]
    lines.append(line(rows[-1]) + "   <- this inspection")
    lines.append(f"checkpoint {result['checkpoint']}: {len(result['returns'])} held-out "
                 f"episode(s), return {result['return_mean']:.1f}")
    if ol:
        lines.append(f"open loop ({ol['sequences']} sequence(s) x {ol['length']} steps, context "
                     f"{CONTEXT}): "
                     f"image MSE {ol['openl_image_mse']:.5f}, reward MAE "
                     f"{ol['openl_reward_mae']:.4f}; posterior reconstruction MSE "
                     f"{ol['recon_image_mse']:.5f}")
        lines.append(f"wrote {result['png']}")
    else:
        lines.append(f"open loop: episode too short ({result['episode_steps']} steps)")
    return "\n".join(lines)


def evaluate_run(run_dir: str | Path, *, checkpoint: str = "latest", episodes: int = 10,
                 video: str | Path | None = None, seed: int | None = None,
                 log: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """`diswm eval`: evaluate one of a run's checkpoints (``latest``, ``best`` or a path) on
    `episodes` episodes with the eval-mode policy, without training; with `video`, write the
    first episode beside the model's reconstruction there (.mp4, or .gif where ffmpeg is
    missing; the suffix given is replaced by the one written). ValueError naming what is
    wrong (the run folder, the checkpoint, the episode count)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: no such run folder")
    if episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {episodes}")
    ckpt = CheckpointSet(run_dir / CHECKPOINT.parent).resolve(checkpoint)
    learner, extra = Learner.from_checkpoint(ckpt, log=log)
    cfg = learner.cfg
    env_steps = extra.get("counters", {}).get("env_steps") if isinstance(extra, dict) else None
    seed = cfg.train.seed + 20_000 if seed is None else seed
    log(f"eval: {ckpt} ({learner.updates} updates, env step {env_steps}, scheme "
        f"{learner.scheme}): {episodes} episode(s) of {cfg.env.task}, seed {seed}")
    returns, recording = evaluate_recorded(cfg, learner, episodes, learner.scheme, seed)
    written = None
    if video is not None:
        media = episode_video(learner, recording)
        written = atomic_write(Path(video).with_suffix(media["suffix"]), media["data"])
    return {"run_dir": str(run_dir), "checkpoint": str(ckpt), "task": cfg.env.task,
            "updates": learner.updates, "env_steps": env_steps, "scheme": learner.scheme,
            "seed": seed, "returns": returns, "return_mean": float(np.mean(returns)),
            "return_std": float(np.std(returns)), "video": str(written) if written else None}
