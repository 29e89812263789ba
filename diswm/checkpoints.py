"""Loading checkpoints safely, with errors that name the file and never advise unsafe loading;
the set of checkpoints a run keeps.

    payload = load_checkpoint(path, "learner checkpoint")   # ValueError on anything wrong
    ckpts = CheckpointSet(run_dir / "checkpoints", keep=3)  # last 3, latest.pt, best.pt

Every checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain containers
only, no unpickling of code. A missing, truncated, foreign or crafted file raises one
`ValueError` that names the file and what is wrong with it (PyTorch's own message suggests
retrying with ``weights_only=False``; that advice is dropped, never passed on).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from diswm.atomic import atomic_write, fsync_dir


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> Any:
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{what} {path} does not exist")
    if not path.is_file():
        raise ValueError(f"{what} {path} is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every failure of a safe load means a bad file
        raise ValueError(f"{what} {path} cannot be loaded: {_reason(err)}") from None


def _reason(err: BaseException) -> str:
    text = str(err)
    if "weights_only" in text or "Unpickl" in type(err).__name__:
        return ("it holds objects other than tensors and plain containers, which a safe load "
                "refuses (a crafted file, or not one of ours)")
    if isinstance(err, EOFError) or "zip" in text.lower() or "central directory" in text:
        return "truncated, or not a PyTorch checkpoint"
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(err).__name__)
    return f"{type(err).__name__}: {first}"[:200]


LATEST, BEST, BEST_RECORD = "latest.pt", "best.pt", "best.json"


def numbered(updates: int) -> str:
    """The file name of the checkpoint taken after `updates` updates."""
    return f"ckpt-{int(updates):09d}.pt"


class CheckpointSet:
    """A run's learner checkpoints in ``<run>/checkpoints``:

        ckpt-<updates>.pt   the last `keep` checkpoints (train.keep_checkpoints), one per save
        latest.pt           the newest of them (a hard link: no second copy on the disk)
        best.pt, best.json  the checkpoint whose evaluation returned most, and that return

    Every file is written atomically (diswm/atomic.py), links included, so a crash leaves
    each one whole. `candidates()` lists them newest first for a resume that skips a damaged
    one. A checkpoint an evaluation still in flight was taken at is never pruned before its
    result can make it the best."""

    def __init__(self, folder: str | Path, keep: int = 3):
        if keep < 1:
            raise ValueError(f"train.keep_checkpoints must be at least 1, got {keep}")
        self.folder, self.keep = Path(folder), int(keep)

    def save(self, write, updates: int, protect: Iterable[int] = ()) -> Path:
        """`write(path)` writes the checkpoint of `updates` (atomically); latest.pt follows it
        and checkpoints beyond the newest `keep` (bar the best and `protect`) are removed."""
        path = self.folder / numbered(updates)
        write(path)
        link(path, self.folder / LATEST)
        self.prune(protect)
        return path

    def numbered(self) -> list[tuple[int, Path]]:
        """(updates, path) of the numbered checkpoints, newest first."""
        out = []
        for path in self.folder.glob("ckpt-*.pt"):
            try:
                out.append((int(path.stem.split("-", 1)[1]), path))
            except ValueError:
                continue
        return sorted(out, reverse=True)

    def prune(self, protect: Iterable[int] = ()) -> None:
        keep = {p.name for _, p in self.numbered()[:self.keep]}
        keep |= {numbered(u) for u in protect}
        best = self.best()
        if best is not None:
            keep.add(best["file"])
        for _, path in self.numbered():
            if path.name not in keep:
                path.unlink(missing_ok=True)

    def best(self) -> dict[str, Any] | None:
        """best.json: {"file", "updates", "env_steps", "return"}, or None before the first."""
        path = self.folder / BEST_RECORD
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:
            return None  # torn by hand: the next evaluation writes it again

    def offer(self, updates: int, env_steps: int, value: float) -> bool:
        """An evaluation of the weights after `updates` returned `value`: if that beats the best
        so far and its checkpoint is here, it becomes best.pt. Returns whether it did."""
        best, path = self.best(), self.folder / numbered(updates)
        if not path.exists() or (best is not None and value <= float(best["return"])):
            return False
        link(path, self.folder / BEST)
        atomic_write(self.folder / BEST_RECORD, json.dumps(
            {"file": path.name, "updates": int(updates), "env_steps": int(env_steps),
             "return": float(value)}, indent=1) + "\n")
        return True

    def candidates(self) -> list[Path]:
        """Checkpoints to resume from, newest first: latest.pt, then the numbered ones."""
        out = [self.folder / LATEST] if (self.folder / LATEST).exists() else []
        return out + [p for _, p in self.numbered()]

    def resolve(self, which: str) -> Path:
        """"latest", "best" or a path -> the checkpoint's path; ValueError naming what is
        missing."""
        if which in ("latest", "best"):
            path = self.folder / (LATEST if which == "latest" else BEST)
            if not path.exists():
                raise ValueError(f"no {which} checkpoint in {self.folder}"
                                 + (" (no evaluation has finished yet)" if which == "best"
                                    else ""))
            return path
        path = Path(which)
        if not path.is_file():
            raise ValueError(f"checkpoint {path} does not exist")
        return path


def link(src: Path, dst: Path) -> None:
    """Make `dst` name the same file as `src`, atomically (a copy where links fail)."""
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)
    fsync_dir(dst.parent)
