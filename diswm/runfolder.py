"""A training run's folder: its file names, and the helpers that write and read them.

The serial runner and the distributed learner write the same files::

    config.yaml           the resolved config (Config.load reads it back)
    checkpoints/          learner checkpoints (weights_only-loadable) + the loop's counters:
                          ckpt-<updates>.pt (the last train.keep_checkpoints), latest.pt (the
                          newest), best.pt + best.json (the best evaluation's; checkpoints.py)
    train.csv             one row per `log_every` updates (losses, eta, update time, fps)
    eval.csv              one row per evaluation (mean/min/max return, scheme, open-loop errors)
    episodes.csv          one row per training episode (the exploring policy's return, as
                          DreamerV2's published scores count them)
    random.json           a uniform-random policy's returns on the task (the reference)
    openloop/             openloop_<env_steps>.png: the world model's open-loop prediction
    metrics.json          summary: evaluations, counters, wall time
    curve.png             evaluation return vs env steps (scheme switch marked)

Run folders are private: created (or tightened) to mode 0700. A run folder holds the Redis
password file, the Ray token, checkpoints and logs; on a shared machine nobody but its owner
should read them.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from diswm.atomic import atomic_write
from diswm.config import Config

EPISODES = "episodes.csv"
EPISODE_COLUMNS = ("env_steps", "return", "length", "policy_version", "actor", "env", "scheme",
                   "id")


def private_dir(path: str | Path) -> Path:
    """Create `path` (and parents) and make it mode 0700; returns it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.chmod(path, 0o700)
    except PermissionError:
        pass  # not ours (a shared parent given as the run folder): leave it as it is
    return path


def append_episode(run_dir: str | Path, fields: dict[str, Any]) -> None:
    """One training episode (the exploring policy's, as DreamerV2's published scores count
    them) as a row of ``episodes.csv``; `id` is its Redis stream id in a distributed run."""
    path = Path(run_dir) / EPISODES
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=EPISODE_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({k: fields.get(k, "") for k in EPISODE_COLUMNS})


def read_episodes(run_dir: str | Path) -> list[dict[str, str]]:
    """The rows of ``episodes.csv`` (none when the run has no such file)."""
    path = Path(run_dir) / EPISODES
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def last_episode_id(run_dir: str | Path) -> str:
    """The stream id of the last training episode in ``episodes.csv`` ("0-0": none yet)."""
    ids = [row["id"] for row in read_episodes(run_dir) if row.get("id")]
    return ids[-1] if ids else "0-0"


CHECKPOINT = Path("checkpoints") / "latest.pt"


def append_csv(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


RANDOM = "random.json"


def read_random_reference(run_dir: Path) -> float | None:
    path = Path(run_dir) / RANDOM
    return json.loads(path.read_text())["return_mean"] if path.exists() else None


def plot_curve(evals: list[dict], path: Path, title: str, switch_at: float | None,
               random_return: float | None = None, task: str | None = None,
               published: str | None = "dreamerv2") -> None:
    """Eval return vs env steps; with `task`, the `published` method's seeds on it as a band
    over the same env steps (diswm/published.py), when there are any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = [e["env_steps"] for e in evals]
    ax.plot(xs, [e["return_mean"] for e in evals], marker="o", label="eval return")
    ax.fill_between(xs, [e["return_min"] for e in evals], [e["return_max"] for e in evals],
                    alpha=0.2)
    if switch_at is not None:
        ax.axvline(switch_at, color="grey", ls="--", label="scheme switch")
    if random_return is not None:
        ax.axhline(random_return, color="tab:red", ls=":", label="random policy")
    if task and published and xs:
        from diswm.published import draw

        draw(ax, published, task, max(xs))
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_summary(run_dir: Path, cfg: Config, evals: list[dict], **fields: Any) -> dict[str, Any]:
    """metrics.json (the evaluations and `fields`) and curve.png of a training run folder."""
    random_return = read_random_reference(run_dir)
    summary = {"task": cfg.env.task, **fields, "evaluations": evals,
               "final_return": evals[-1]["return_mean"] if evals else None,
               "random_return": random_return}
    atomic_write(run_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
    if evals:
        switch = (cfg.distraction.switch_at * cfg.train.steps
                  if cfg.distraction.enabled and cfg.distraction.switch_at < 1 else None)
        plot_curve(evals, run_dir / "curve.png", cfg.env.task, switch, random_return,
                   task=cfg.env.task)
    return summary
