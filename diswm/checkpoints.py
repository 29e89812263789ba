"""Loading checkpoints safely, with errors that name the file and never advise unsafe loading.

    payload = load_checkpoint(path, "learner checkpoint")   # ValueError on anything wrong

Every checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain containers
only, no unpickling of code. A missing, truncated, foreign or crafted file raises one
`ValueError` that names the file and what is wrong with it (PyTorch's own message suggests
retrying with ``weights_only=False``; that advice is dropped, never passed on).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


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
