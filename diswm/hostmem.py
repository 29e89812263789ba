"""Host memory for large tensors: keep freed memory for reuse instead of handing it back.

glibc's malloc serves every request above its mmap threshold (32 MiB at most) with a fresh
``mmap`` and unmaps it again on ``free``. A learner at the default size (50 x 50 batches)
allocates and frees dozens of activations of 30-300 MB in every update, so every update faults
all of their pages in again (450,000-580,000 minor faults here), and the kernel zeroes each
page first. Measured on this 2-core CPU (2026-11-26): cloning a warm 100 MB tensor took 31 ms
into fresh pages and 6.6 ms into reused ones; a compiled bf16 default-size update ran 1.06-1.37x
faster with reuse (`diswm bench learner --host-memory-ab`, two runs; docs/bench/README.md, "Learner").

`reuse_freed_memory()` sets glibc's ``M_MMAP_MAX`` to 0 (every allocation comes from the heap)
and its trim threshold to 2 GiB, the largest it takes (freed memory stays in the heap), so the
same pages serve every update. The process keeps its peak heap until it exits, plus some
fragmentation: torch asks for 64-byte aligned blocks, which a freed block of the same size does
not quite hold, so the heap grows by a few blocks until freed neighbours merge (+8% process peak
at 50 x 50). `train.reuse_host_memory` (default on) applies it in the learner's and the
pretraining trainer's process. It changes no value, only where memory comes from. Elsewhere
than Linux with glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # bytes; mallopt takes an int

_applied = False


def reuse_freed_memory() -> tuple[bool, str]:
    """Make this process's malloc keep and reuse freed memory; (applied, a one-line reason).
    Process-wide and for good (glibc's adaptive default cannot be restored), so a comparison
    needs fresh processes (`diswm bench learner --host-memory-ab`). Idempotent."""
    global _applied
    if _applied:
        return True, "already on"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False, f"not glibc ({platform.system()} {platform.libc_ver()[0] or 'unknown libc'})"
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError) as err:
        return False, f"no mallopt ({err})"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 when it takes a setting.
    if mallopt(M_MMAP_MAX, 0) != 1 or mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return False, "mallopt refused the settings"
    _applied = True
    return True, "freed host memory is kept for reuse (glibc: no mmap, no trim)"
