"""`diswm bench learner`: learner updates/s and peak memory, eager vs faster modes, one run.

Cases: the default model size at batch 50 x 50 (DESIGN.md section 6: the authors' code takes
about 14 s per such update on this 2-core machine) and the `debug` preset, each in every mode:

    eager          plain PyTorch (the baseline every ratio divides by)
    channels_last  channels-last memory format in the conv encoder/decoder
    compile        torch.compile of the conv encoder/decoder stacks (+ channels_last); the first
                   update's compile time is reported apart
    amp            bf16 autocast (only where CUDA is present)

Modes of one size are timed round-robin (`interleaved_rates`) on the same fixed batch, so drift
hits them alike. Peak memory: CUDA peak allocated bytes on GPU; on CPU, the peak rise of the
process's resident set over the case's updates (freed heap trimmed first), sampled every
2 ms (an approximation).
"""

from __future__ import annotations

import ctypes
import gc
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from diswm.bench.common import interleaved_rates, write_report
from diswm.config import load_config

MODES = {
    "eager": [],
    "channels_last": ["train.channels_last=true"],
    "compile": ["train.channels_last=true", "train.compile=true"],
    "amp": ["train.amp=true"],
}
SIZES = {"defaults": [], "debug": ["debug"]}


def synthetic_batch(B: int, T: int, action_dim: int, size: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    first = np.zeros((B, T), bool)
    first[:, 0] = True
    return {"image": rng.integers(0, 256, (B, T, size, size, 3), dtype=np.uint8),
            "action": rng.uniform(-1, 1, (B, T, action_dim)).astype(np.float32),
            "reward": rng.normal(size=(B, T)).astype(np.float32), "is_first": first,
            "is_terminal": np.zeros((B, T), bool)}


def _trim_heap() -> None:
    """Give freed heap pages back to the OS so each case's resident-set rise starts level."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakMemory:
    """Peak memory over a block: CUDA peak allocated, or sampled resident-set rise on CPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        _trim_heap()
        self._base, self._top, self._stop = _rss_bytes(), _rss_bytes(), threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.002):
                self._top = max(self._top, _rss_bytes())
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = max(self.peak, torch.cuda.max_memory_allocated() - self._base)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, max(self._top, _rss_bytes()) - self._base)


def _case(learner, memory: PeakMemory, batch: dict) -> Callable[[int], int]:
    def run(n: int) -> int:
        with memory:
            for _ in range(n):
                learner.update(batch)
            if learner.device.type == "cuda":
                torch.cuda.synchronize()
        return n
    return run


def bench_learner(*, presets: Sequence[str] = (), overrides: Sequence[str] = (),
                  sizes: Sequence[str] = ("defaults", "debug"),
                  modes: Sequence[str] = ("eager", "channels_last"), updates: int = 1,
                  rounds: int = 2, action_dim: int = 6, json_path=None,
                  progress: Callable[[str], None] | None = print) -> dict[str, Any]:
    from learner import Learner  # local: keeps `diswm.bench` importable without the role folders

    cuda = torch.cuda.is_available()
    modes = [m for m in modes if m != "amp" or cuda]
    unknown = sorted(set(modes) - set(MODES)) + sorted(set(sizes) - set(SIZES))
    if unknown or "eager" not in modes:
        raise ValueError(f"modes must include 'eager' and come from {sorted(MODES)}, sizes from "
                         f"{sorted(SIZES)}; got {list(modes)} / {list(sizes)}")
    results: dict[str, Any] = {}
    for size in sizes:
        learners, memory, first, batch, cfg = {}, {}, {}, None, None
        for mode in modes:
            cfg = load_config([*SIZES[size], *presets], [*overrides, *MODES[mode]])
            learner = Learner(cfg, action_dim)
            batch = batch or synthetic_batch(cfg.train.batch_size, cfg.train.batch_length,
                                             action_dim, cfg.env.size)
            start = time.perf_counter()
            learner.update(batch)  # warm-up (and compilation)
            first[mode] = time.perf_counter() - start
            learners[mode], memory[mode] = learner, PeakMemory(learner.device)
            if progress:
                progress(f"{size}/{mode}: first update {first[mode]:.2f} s")

        cases = {m: _case(learners[m], memory[m], batch) for m in modes}
        rates = interleaved_rates(cases, updates, rounds,
                                  (lambda msg, s=size: progress(f"{s}: {msg}")) if progress else None)
        base = rates["eager"]["median"]
        results[size] = {
            "batch": [cfg.train.batch_size, cfg.train.batch_length],
            "model": {k: getattr(cfg.model, k) for k in ("cnn_depth", "stoch", "deter", "hidden",
                                                         "units")},
            "parameters": sum(p.numel() for p in learners["eager"].wm.parameters())
            + sum(p.numel() for p in learners["eager"].ac.parameters()),
            "device": str(learners["eager"].device),
            "updates_per_s": rates,
            "seconds_per_update": {m: 1.0 / r["median"] for m, r in rates.items()},
            "speedup_vs_eager": {m: r["median"] / base for m, r in rates.items()},
            "first_update_seconds": first,
            "peak_memory_bytes": {m: memory[m].peak for m in modes},
        }
        del learners, cases
    payload = {
        "bench": "learner",
        "unit": "learner updates (world model + actor + critic step) per second",
        "baseline": "eager (plain PyTorch, float32, NCHW) in the same run",
        "memory_note": ("CUDA peak allocated bytes" if cuda else
                        "CPU: peak rise of the process resident set during the case, sampled"),
        "updates_per_round": updates, "rounds": rounds, "torch_threads": torch.get_num_threads(),
        "reference": "authors' code: about 14 s per 50x50 update on this 2-core CPU (DESIGN.md 6)",
        "results": results,
    }
    return write_report(json_path, payload)
