"""Run folders are private: created (or tightened) to mode 0700.

A run folder holds the Redis password file, the Ray token, checkpoints and logs; on a shared
machine nobody but its owner should read them. Its ``episodes.csv`` (every training episode,
written by the serial runner and the distributed learner, read by reports) is kept here too.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

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
