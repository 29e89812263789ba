"""Run folders are private: created (or tightened) to mode 0700.

A run folder holds the Redis password file, the Ray token, checkpoints and logs; on a shared
machine nobody but its owner should read them.
"""

from __future__ import annotations

import os
from pathlib import Path


def private_dir(path: str | Path) -> Path:
    """Create `path` (and parents) and make it mode 0700; returns it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.chmod(path, 0o700)
    except PermissionError:
        pass  # not ours (a shared parent given as the run folder): leave it as it is
    return path
