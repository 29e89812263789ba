"""The actors' policy step alone: eager fp32, bf16 autocast, and compiled (issue 10's "the
actors' policy may use it too if it helps"). One torch thread, as an actor runs it; random
weights and frames (the step's cost does not depend on them); each preset's cases timed
round-robin in one process, 3 rounds of 300 calls, min per case.

    .venv/bin/python docs/bench/probe_policy_step.py [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from diswm.agent import Policy
from diswm.presets import load_config

CASES = (("debug",), ("cpu", "dreamerv2"), ("defaults",), ("dreamerv2",))


def per_call_ms(policy: Policy, frames: np.ndarray, calls: int, autocast: bool) -> float:
    obs = {"image": frames, "is_first": np.zeros(len(frames), bool)}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        start = time.perf_counter()
        for _ in range(calls):
            policy(obs)
        return 1e3 * (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default=None)
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for presets in CASES:
        cfg = load_config(list(presets))
        for envs in args.envs:
            frames = np.random.default_rng(0).integers(0, 256, (envs, 64, 64, 3), np.uint8)
            eager = Policy(cfg, 6, envs)
            compiled = Policy(cfg, 6, envs, compile=True)
            compiled.load_weights(0, {prefix + k: v for prefix, module in eager._modules.items()
                                      for k, v in module.state_dict().items()})
            start = time.perf_counter()
            per_call_ms(compiled, frames, 1, False)
            compile_s = time.perf_counter() - start
            cases = {"eager_fp32": (eager, False), "eager_bf16": (eager, True),
                     "compiled_fp32": (compiled, False)}
            times = {name: [] for name in cases}
            for policy, autocast in cases.values():  # warm-up
                per_call_ms(policy, frames, 20, autocast)
            for _ in range(3):
                for name, (policy, autocast) in cases.items():
                    times[name].append(per_call_ms(policy, frames, 300, autocast))
            row = {"presets": list(presets), "envs": envs, "compile_seconds": compile_s,
                   **{f"{k}_ms": min(v) for k, v in times.items()},
                   "compiled_state": compiled.compile_state}
            row["bf16_speedup"] = row["eager_fp32_ms"] / row["eager_bf16_ms"]
            row["compile_speedup"] = row["eager_fp32_ms"] / row["compiled_fp32_ms"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"probe": "policy step", "torch_threads": 1, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
