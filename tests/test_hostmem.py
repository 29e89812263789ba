"""Freed host memory is kept for reuse (diswm/hostmem.py, `train.reuse_host_memory`).

The measure is the kernel's count of minor page faults (getrusage), not time: a 100 MiB tensor
allocated and freed over and over, as a learner's activations are, faults in all of its 25,600
pages every time with glibc's default (a fresh mmap each time) and none once the heap keeps and
reuses the memory. Not from the first cycle: torch asks for 64-byte aligned blocks, which a
freed block of the same size does not quite hold, so the heap first grows by a few blocks until
freed neighbours merge (7 to 9 cycles here, always; a learner's mix of sizes settles in one or two
updates). Each case runs in a fresh interpreter, as the setting is process-wide.
"""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

PAGES = (100 << 20) // 4096

SCRIPT = """
import resource, sys
import torch
from diswm.presets import load_config
from learner import Learner

how = sys.argv[1]
if how == "learner-on":
    Learner(load_config(["tiny"]), 1)
elif how == "learner-off":
    Learner(load_config(["tiny"], ["train.reuse_host_memory=false"]), 1)
elif how == "call":
    from diswm.hostmem import reuse_freed_memory
    applied, why = reuse_freed_memory()
    assert applied, why
    assert reuse_freed_memory() == (True, "already on")

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

for _ in range(CYCLES):
    before = faults()
    a = torch.ones(100 << 20, dtype=torch.uint8)  # allocated, touched, freed
    del a
    print(faults() - before)
"""
CYCLES = 16


def _faults(how: str) -> list[int]:
    """Page faults of each cycle."""
    out = subprocess.run([sys.executable, "-c", f"CYCLES = {CYCLES}\n" + SCRIPT, how],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return [int(x) for x in out.stdout.split()[-CYCLES:]]


def test_glibc_default_faults_in_a_reallocated_tensor():
    """The reference: without the setting every page of the new tensor faults (if this fails,
    the platform already reuses memory and the other tests prove nothing)."""
    assert min(_faults("none")) >= PAGES * 0.9


@pytest.mark.parametrize("how", ["call", "learner-on"])
def test_reused_memory_does_not_fault(how):
    assert max(_faults(how)[-4:]) < PAGES * 0.01


def test_learner_leaves_malloc_alone_when_switched_off():
    """`train.reuse_host_memory=false`: large blocks are mapped afresh, as before."""
    assert min(_faults("learner-off")) >= PAGES * 0.9
