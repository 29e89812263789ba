"""Files that never tear: written beside the target, flushed to the disk, renamed over it.

    atomic_write(path, text_or_bytes)
    with atomic_file(path) as f:          # binary; atomic_file(path, "w") for text
        torch.save(payload, f)

A reader (a resumed run, Prometheus, `cluster status`, a crash in the middle) sees the old file or
the new one, never a part: the data is fsynced before the rename and the folder after it, so a
power cut does not leave an empty file behind a completed rename either. The temporary file is
``.<name>.<random>.tmp`` in the same folder (mode 0600, as mkstemp makes it; the run folders
are private), removed if the write fails; cleanups that remove ``*.tmp`` leftovers find it.
Every file of the project that must not tear (checkpoints, configs, manifests and shards, state
and summary files) is written here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """A file object whose contents replace `path` when the block ends without an error."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Replace `path` with `data` (text or bytes) atomically; returns the path."""
    with atomic_file(path, "w" if isinstance(data, str) else "wb") as f:
        f.write(data)
    return Path(path)


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in `folder` durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
