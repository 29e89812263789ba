"""`diswm bench learner`: learner updates/s, FLOP rate and peak memory per precision and mode.

Cases: the default model size at batch 50 x 50 (the authors' released update takes about 12.5 s
on this 2-core machine, timed interleaved with ours), the `debug` preset and (on request) the
`debug` preset with the DreamerV2 baseline's conv encoder/decoder (`debug_dreamerv2`, what the
CPU learning proof trains), each in every mode:

    eager          plain PyTorch: float32, NCHW, no compile (the baseline every ratio divides by)
    channels_last  float32, channels-last conv stacks
    compile        float32, channels-last, torch.compile of the world-model and actor-critic
                   losses (train.compile); the first update's compile time is reported apart
    bf16           bf16 autocast for matmuls/convs (train.precision=bf16), channels-last
    bf16_compile   bf16 + compile: the fastest setting where the hardware has native bf16
    fp16           fp16 autocast with loss scaling (CUDA only)
    bf16_cudagraphs  bf16 + compile with CUDA graphs (train.compile_mode=reduce-overhead; CUDA
                   only)
    fastconv       bf16 + channels-last with the CPU's fast stride-2 convs (train.fast_convs;
                   diswm/models/fastconv.py); every other mode uses torch.nn's convolutions
    fastconv_compile  fastconv + compile: the learner's CPU default under `--budget cpu`

Per size and mode the report holds seconds per update, achieved GFLOP/s (the update's FLOPs
counted once per size with `torch.utils.flop_counter.FlopCounterMode`), that rate as a fraction
of this machine's matmul peak for the mode's dtype (a 2048^2 matmul timed in the same run, before
and after the cases; the higher is kept), peak memory, and the ratio to the authors' update.

`teacher=True` (`--teacher`) gives every learner a frozen teacher (a randomly initialised
pretraining model of the size's settings), as DisWM's real learner has: every mode then encodes
each sampled frame with it, except `stored_teacher`, whose batches carry the teacher's latents as
the actors store them (diswm/agent/teacher.py). `stored_teacher` vs `fastconv_compile` is what
storing them saves. FLOPs are counted per mode group (the stored mode does fewer).

Host memory (diswm/hostmem.py) is process-wide, so it is one setting for the whole run
(`host_memory`: "reuse", the learner's default, or "system", glibc's own malloc as plain
PyTorch has it), the same for every mode. `host_memory_ab` measures what reusing freed memory
gives: fresh processes with and without it, alternated, each timing the same update.

Modes of one size are timed round-robin (`interleaved_rates`) on the same fixed batch, so drift
hits them alike. Peak memory is measured in a separate, untimed update per mode: CUDA peak
allocated bytes on GPU; on CPU, the peak rise of the process's resident set over that update
(freed heap trimmed first), sampled every 2 ms (an approximation).
"""

from __future__ import annotations

import ctypes
import gc
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from diswm.hostmem import reuse_freed_memory
from diswm.presets import load_config
from ops.bench.common import format_rate, interleaved_rates, write_report

_PLAIN = ["train.precision=fp32", "train.channels_last=false", "train.compile=false",
          "train.fast_convs=false"]
MODES = {
    "eager": _PLAIN,
    "channels_last": [*_PLAIN, "train.channels_last=true"],
    "compile": [*_PLAIN, "train.channels_last=true", "train.compile=true"],
    "bf16": [*_PLAIN, "train.channels_last=true", "train.precision=bf16"],
    "bf16_compile": [*_PLAIN, "train.channels_last=true", "train.precision=bf16",
                     "train.compile=true"],
    "fp16": [*_PLAIN, "train.channels_last=true", "train.precision=fp16"],
    "bf16_cudagraphs": [*_PLAIN, "train.channels_last=true", "train.precision=bf16",
                        "train.compile=true", "train.compile_mode=reduce-overhead"],
    "fastconv": [*_PLAIN, "train.channels_last=true", "train.precision=bf16",
                 "train.fast_convs=true"],
    "fastconv_compile": [*_PLAIN, "train.channels_last=true", "train.precision=bf16",
                         "train.compile=true", "train.fast_convs=true"],
    # With --teacher: fastconv_compile fed batches that carry the teacher's latents, as the
    # actors store them (distill.teacher_latents=replay); every other mode encodes every
    # sampled frame with the teacher in the learner, as before.
    "stored_teacher": [*_PLAIN, "train.channels_last=true", "train.precision=bf16",
                       "train.compile=true", "train.fast_convs=true"],
}
DTYPE_OF_MODE = {"eager": "fp32", "channels_last": "fp32", "compile": "fp32", "bf16": "bf16",
                 "bf16_compile": "bf16", "fp16": "fp16",
                 "bf16_cudagraphs": "bf16", "fastconv": "bf16", "fastconv_compile": "bf16",
                 "stored_teacher": "bf16"}
SIZES = {"defaults": [], "debug": ["debug"], "debug_dreamerv2": ["debug", "dreamerv2"]}
#: The authors' released update at 50 x 50 on this 2-core machine (timed interleaved with ours in
#: one process: 12.3-12.8 s, while our fp32 channels-last update took 8.2-8.3 s).
AUTHORS_SECONDS = 12.5
AUTHORS_OVER_CHANNELS_LAST = 12.5 / 8.25


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None,
                seconds: float = 1.0) -> float:
    """GFLOP/s of an n x n matmul in `dtype` on `device` (best of a few timed batches); n is
    2048 on a CPU and 8192 on a GPU (a smaller product leaves a GPU's units idle)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        sync()
        best = max(best, 4 * 2 * n ** 3 / (time.perf_counter() - start) / 1e9)
    return best


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def update_flops(learner, batch) -> int:
    """FLOPs of one update (matmuls and convolutions, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        learner.update(batch)
    return int(counter.get_total_flops())


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


def _case(learner, batch: dict) -> Callable[[int], int]:
    def run(n: int) -> int:
        for _ in range(n):
            learner.update(batch)
        if learner.device.type == "cuda":
            torch.cuda.synchronize()
        return n
    return run


def bench_learner(*, presets: Sequence[str] = (), overrides: Sequence[str] = (),
                  sizes: Sequence[str] = ("defaults", "debug"),
                  modes: Sequence[str] = ("eager", "channels_last", "bf16", "bf16_compile"),
                  updates: int = 1, rounds: int = 2, action_dim: int = 6, json_path=None,
                  host_memory: str = "reuse", host_memory_ab: bool = False,
                  teacher: bool = False,
                  progress: Callable[[str], None] | None = print) -> dict[str, Any]:
    from diswm.agent.teacher import FIELD, TeacherLatents
    from diswm.models import VideoModel
    from learner import Learner  # local: keeps `ops.bench` importable without the role folders

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    unknown = sorted(set(modes) - set(MODES)) + sorted(set(sizes) - set(SIZES))
    if "stored_teacher" in modes and not teacher:
        raise ValueError("mode stored_teacher needs teacher=True (--teacher)")
    if unknown or "eager" not in modes:
        raise ValueError(f"modes must include 'eager' and come from {sorted(MODES)}, sizes from "
                         f"{sorted(SIZES)}; got {list(modes)} / {list(sizes)}")
    if host_memory not in ("reuse", "system"):
        raise ValueError(f"host_memory must be 'reuse' or 'system', got {host_memory!r}")
    reuse = host_memory == "reuse"
    if reuse:
        reuse_freed_memory()
    run_overrides = [*overrides, f"train.reuse_host_memory={str(reuse).lower()}"]
    skipped = [m for m in modes if m in ("fp16", "bf16_cudagraphs") and not cuda]
    modes = [m for m in modes if m not in skipped]
    if skipped and progress:
        progress(f"skipping {', '.join(skipped)}: CUDA only")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    wanted = sorted({DTYPE_OF_MODE[m] for m in modes})
    peaks = {d: matmul_peak(device, dtypes[d]) for d in wanted}
    if progress:
        progress("matmul peak (2048^2 CPU, 8192^2 GPU): " + ", ".join(f"{d} {g:.0f} GFLOP/s"
                                                     for d, g in peaks.items()))
    results: dict[str, Any] = {}
    for size in sizes:
        learners, memory, first, compile_s, batch, cfg = {}, {}, {}, {}, None, None
        batches: dict[str, dict] = {}
        pretrained = None
        for mode in modes:
            cfg = load_config([*SIZES[size], *presets], [*MODES[mode], *run_overrides])
            if teacher and pretrained is None:
                torch.manual_seed(1)
                pretrained = VideoModel(cfg.model, cfg.env.size).state_dict()
            learner = Learner(cfg, action_dim, pretrained=pretrained, log=progress)
            batch = batch or synthetic_batch(cfg.train.batch_size, cfg.train.batch_length,
                                             action_dim, cfg.env.size)
            batches[mode] = batch
            if mode == "stored_teacher":
                if learner.teacher is None:
                    raise ValueError(f"size {size}: no teacher (is distillation off?)")
                images = batch["image"]  # (B, T, H, W, C) -> one latent per frame
                z = TeacherLatents(learner.teacher)(images.reshape(-1, *images.shape[2:]))
                batches[mode] = {**batch, FIELD: z.reshape(*images.shape[:2], -1)}
            start = time.perf_counter()
            learner.update(batches[mode])  # warm-up (and compilation)
            first[mode] = time.perf_counter() - start
            compile_s[mode] = learner.compile_seconds
            learners[mode], memory[mode] = learner, PeakMemory(learner.device)
            if progress:
                progress(f"{size}/{mode}: first update {first[mode]:.2f} s"
                         + (f" ({compile_s[mode]:.1f} s compiling)" if compile_s[mode] else ""))
        flops = update_flops(learners["eager"], batch)
        flops_of = {m: (update_flops(learners["eager"], batches[m]) if m == "stored_teacher"
                        else flops) for m in modes}

        # Peak memory in a pass of its own: the CPU sampler thread (every 2 ms) would slow the
        # timed updates of small, Python-bound models by tens of percent.
        for m in modes:
            with memory[m]:
                learners[m].update(batches[m])
        cases = {m: _case(learners[m], batches[m]) for m in modes}
        rates = interleaved_rates(cases, updates, rounds,
                                  (lambda msg, s=size: progress(f"{s}: {msg}")) if progress else None)
        base = rates["eager"]["median"]
        seconds = {m: 1.0 / r["median"] for m, r in rates.items()}
        gflops = {m: flops_of[m] / 1e9 / seconds[m] for m in modes}
        results[size] = {
            "batch": [cfg.train.batch_size, cfg.train.batch_length],
            "model": {k: getattr(cfg.model, k) for k in ("cnn_depth", "stoch", "deter", "hidden",
                                                         "units")},
            "parameters": sum(p.numel() for p in learners["eager"].wm.parameters())
            + sum(p.numel() for p in learners["eager"].ac.parameters()),
            "device": str(learners["eager"].device),
            "updates_per_s": rates,
            "seconds_per_update": seconds,
            "speedup_vs_eager": {m: r["median"] / base for m, r in rates.items()},
            "first_update_seconds": first,
            "compile_seconds": compile_s,
            "peak_memory_bytes": {m: memory[m].peak for m in modes},
            "gflop_per_update": flops / 1e9,
            "gflops": gflops,
            "teacher": bool(teacher and learners["eager"].teacher is not None),
        }
        if "stored_teacher" in modes:
            results[size]["gflop_per_update_stored_teacher"] = flops_of["stored_teacher"] / 1e9
            if "fastconv_compile" in modes:
                results[size]["stored_teacher_speedup"] = (seconds["fastconv_compile"]
                                                           / seconds["stored_teacher"])
        if size == "defaults" and not cuda:
            cl = seconds.get("channels_last")
            results[size]["vs_authors"] = {m: AUTHORS_SECONDS / seconds[m] for m in modes}
            if cl:  # the authors' update estimated from our fp32 channels-last one in this run
                results[size]["vs_authors_same_run_estimate"] = {
                    m: AUTHORS_OVER_CHANNELS_LAST * cl / seconds[m] for m in modes}
        del learners, cases
    peaks_after = {d: matmul_peak(device, dtypes[d]) for d in wanted}
    peak = {d: max(peaks[d], peaks_after[d]) for d in wanted}  # the machine's best in this run
    for size, r in results.items():
        r["fraction_of_matmul_peak"] = {m: g / peak[DTYPE_OF_MODE[m]]
                                        for m, g in r["gflops"].items()}
        if progress:
            for m, sec in r["seconds_per_update"].items():
                progress(f"{size}/{m}: {sec:.3f} s/update ({format_rate(1 / sec)}), "
                         f"{r['gflops'][m]:.1f} GFLOP/s = {r['fraction_of_matmul_peak'][m]:.1%} "
                         f"of the {DTYPE_OF_MODE[m]} matmul peak, "
                         f"{r['peak_memory_bytes'][m] / 2**30:.2f} GiB, "
                         f"{r['speedup_vs_eager'][m]:.2f}x eager")
    payload = {
        "bench": "learner",
        "unit": "learner updates (world model + actor + critic step) per second",
        "baseline": "eager (plain PyTorch, float32, NCHW, no compile) in the same run",
        "memory_note": ("CUDA peak allocated bytes" if cuda else
                        "CPU: peak rise of the process resident set during the case, sampled"),
        "device_name": (torch.cuda.get_device_name() if cuda else _cpu_name()),
        "torch": torch.__version__,
        "updates_per_round": updates, "rounds": rounds, "torch_threads": torch.get_num_threads(),
        "matmul_peak_gflops": peak,
        "matmul_peak_gflops_before_after": {d: [peaks[d], peaks_after[d]] for d in wanted},
        "reference": (f"authors' released update: {AUTHORS_SECONDS} s per 50x50 update on this "
                      "2-core CPU, timed interleaved with our fp32 channels-last update "
                      "(8.25 s); vs_authors divides 12.5 s by ours, "
                      "vs_authors_same_run_estimate scales the authors' time by this run's "
                      "channels-last time (the machine's speed drifts)"),
        "skipped_modes": skipped,
        "host_memory": host_memory,
        "results": results,
    }
    if host_memory_ab:
        mode = "fastconv_compile" if not cuda else "bf16_compile"
        payload["host_memory_ab"] = {
            size: host_memory_reuse_ab(size, mode, presets=presets, overrides=overrides,
                                       updates=max(updates, 2), rounds=max(rounds, 2),
                                       progress=progress)
            for size in sizes}
    return write_report(json_path, payload)


_AB_CHILD = """
import json, resource, sys, time
from ops.bench.learner import MODES, SIZES, synthetic_batch
from diswm.presets import load_config
from learner import Learner
size, mode, updates, reuse, presets, overrides = json.loads(sys.argv[1])
cfg = load_config([*SIZES[size], *presets],
                  [*MODES[mode], *overrides, f"train.reuse_host_memory={reuse}"])
learner = Learner(cfg, 6)
batch = synthetic_batch(cfg.train.batch_size, cfg.train.batch_length, 6, cfg.env.size)
for _ in range(2):  # compile (from inductor's cache after the first child), settle the heap
    learner.update(batch)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
f0, t0 = faults(), time.perf_counter()
for _ in range(updates):
    learner.update(batch)
seconds = (time.perf_counter() - t0) / updates
with open("/proc/self/status") as f:  # VmHWM: this process's peak (ru_maxrss survives exec)
    hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
print(json.dumps({"seconds_per_update": seconds,
                  "page_faults_per_update": (faults() - f0) / updates,
                  "process_peak_rss_bytes": hwm}))
"""


def host_memory_reuse_ab(size: str, mode: str, *, presets: Sequence[str] = (),
                         overrides: Sequence[str] = (), updates: int = 3, rounds: int = 3,
                         progress: Callable[[str], None] | None = print) -> dict[str, Any]:
    """`train.reuse_host_memory` on vs off for one size and mode, each in a fresh process (the
    setting is process-wide and cannot be undone to glibc's adaptive default), alternated over
    `rounds` in both orders. Per setting: median seconds per update, minor page faults per
    update and the process's peak resident set; `speedup` = off / on."""
    runs: dict[str, list[dict]] = {"on": [], "off": []}
    for r in range(rounds):
        for setting in (("on", "off") if r % 2 == 0 else ("off", "on")):
            arg = json.dumps([size, mode, updates, "true" if setting == "on" else "false",
                              list(presets), list(overrides)])
            out = subprocess.run([sys.executable, "-c", _AB_CHILD, arg], capture_output=True,
                                 text=True)
            if out.returncode != 0:
                raise RuntimeError(f"host-memory A/B child ({size}, {setting}) failed: "
                                   + (out.stderr.strip().splitlines() or ["no output"])[-1])
            runs[setting].append(json.loads(out.stdout.strip().splitlines()[-1]))
            if progress:
                progress(f"{size}/{mode} reuse_host_memory={setting}, round {r + 1}/{rounds}: "
                         f"{runs[setting][-1]['seconds_per_update']:.3f} s/update")
    med = {k: float(np.median([x["seconds_per_update"] for x in v])) for k, v in runs.items()}
    report = {
        "mode": mode, "updates_per_process": updates, "rounds": rounds,
        "seconds_per_update": med,
        "seconds_per_update_all": {k: [x["seconds_per_update"] for x in v]
                                   for k, v in runs.items()},
        "page_faults_per_update": {k: float(np.median([x["page_faults_per_update"] for x in v]))
                                   for k, v in runs.items()},
        "process_peak_rss_bytes": {k: max(x["process_peak_rss_bytes"] for x in v)
                                   for k, v in runs.items()},
        "speedup": med["off"] / med["on"],
    }
    if progress:
        progress(f"{size}/{mode}: reusing host memory {report['speedup']:.2f}x "
                 f"({med['off']:.3f} -> {med['on']:.3f} s/update; page faults per update "
                 f"{report['page_faults_per_update']['off']:.0f} -> "
                 f"{report['page_faults_per_update']['on']:.0f}; process peak "
                 f"{report['process_peak_rss_bytes']['off'] / 2**30:.2f} -> "
                 f"{report['process_peak_rss_bytes']['on'] / 2**30:.2f} GiB)")
    return report
