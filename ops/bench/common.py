"""What every benchmark shares: machine description, interleaved timing, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "hostname": platform.node(), "platform": platform.platform(),
        "python": platform.python_version(), "cpu": cpu, "cpu_count": os.cpu_count(),
        "mujoco_gl": os.environ.get("MUJOCO_GL", ""), "git_commit": git_commit(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def format_rate(rate: float) -> str:
    """A rate people can read at any speed: "412/s", "3.41/s", or "2.93 s each" below 1/s."""
    if rate >= 100:
        return f"{rate:.0f}/s"
    if rate >= 1:
        return f"{rate:.3g}/s"
    if rate > 0:
        return f"{1 / rate:.3g} s each"
    return "none"


def interleaved_rates(cases: Mapping[str, Callable[[int], int]], work: int, rounds: int,
                      progress: Callable[[str], None] | None = None) -> dict[str, dict[str, float]]:
    """Run every case `rounds` times, round-robin, so drift on a shared machine hits all alike.

    Each case is called with `work` and returns how many units it did; the result per case is
    the median, min and max rate (units/s) over rounds.
    """
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            units = fn(work)
            samples[name].append(units / (time.perf_counter() - start))
        if progress:
            progress(f"round {r + 1}/{rounds}: " + ", ".join(
                f"{n} {format_rate(s[-1])}" for n, s in samples.items()))
    return {name: {"median": statistics.median(s), "min": min(s), "max": max(s)}
            for name, s in samples.items()}


def write_report(path: str | Path | None, payload: dict[str, Any]) -> dict[str, Any]:
    payload = {**payload, "machine": machine_info(),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    text = json.dumps(payload, indent=2, sort_keys=False)
    if path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return payload
