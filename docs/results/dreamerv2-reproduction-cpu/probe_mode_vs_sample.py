"""Probe: the same learner checkpoints acting by the actor's mode and by sampling from it.

    .venv/bin/python docs/results/dreamerv2-reproduction-cpu/probe_mode_vs_sample.py \
        RUN OUT.csv EPISODES [CHECKPOINT ...]

A run's evaluations act by the actor's mode (DreamerV2's `eval` policy); its training episodes,
which DreamerV2's published scores count, sample from the actor. The two part late in a run.
This plays EPISODES episodes of the run's task with each policy of each checkpoint (default
``RUN/checkpoints/latest.pt``, the final weights; a run overwrites it every
`train.checkpoint_every` env steps, so earlier ones are copies kept while it ran), on the same
env seeds (1000 + i) for both, so the difference is the policy's alone. One CSV row per
checkpoint and policy: the checkpoint's grid point in env steps, its updates, the policy, the
mean, standard deviation, min and max return, and every episode's return.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from diswm.checkpoints import load_checkpoint
from diswm.config import build_config
from diswm.envs import make_env
from diswm.rollout import CheckpointPolicy, run_episode


def probe(run: Path, out: Path, episodes: int, checkpoints: list[Path]) -> None:
    cfg = build_config(yaml.safe_load((run / "config.yaml").read_text()))
    rows = []
    for ckpt in checkpoints:
        payload = load_checkpoint(ckpt, "learner checkpoint")
        point = int(payload["extra"]["schedule"]["checkpointed"])
        updates = int(payload["counters"]["updates"])
        for mode in ("eval", "explore"):
            start, returns = time.perf_counter(), []
            for i in range(episodes):
                policy = CheckpointPolicy(ckpt, mode=mode, seed=1000 + i)
                with make_env(cfg.env, cfg.distraction, seed=1000 + i) as env:
                    returns.append(float(run_episode(env, policy)["reward"].sum()))
            rows.append({"env_steps": point, "updates": updates,
                         "policy": {"eval": "mode", "explore": "sample"}[mode],
                         "mean": round(float(np.mean(returns)), 1),
                         "std": round(float(np.std(returns)), 1),
                         "min": round(min(returns), 1), "max": round(max(returns), 1),
                         "returns": " ".join(f"{r:.1f}" for r in returns),
                         "seconds": round(time.perf_counter() - start, 1)})
            print(rows[-1], flush=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: (r["env_steps"], r["policy"])))


if __name__ == "__main__":
    run_dir = Path(sys.argv[1])
    given = [Path(p) for p in sys.argv[4:]] or [run_dir / "checkpoints" / "latest.pt"]
    probe(run_dir, Path(sys.argv[2]), int(sys.argv[3]), given)
