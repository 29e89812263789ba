# ruff: noqa
# Probe, kept as it was run for this folder's log (from the repository root:
# MUJOCO_GL=egl .venv/bin/python docs/results/make-run-quickstart/probe_initial_policy.py).
# The eval-mode policy (the actor's mode) of a freshly initialised, untrained agent, at make
# run's settings: what an evaluation scores before any learning. Seeds 0-4 of the agent's
# initialisation, 4 episodes each on the distracted target task, colour scheme B (make run's
# evaluations after the switch), env seed 123.
import json
import sys

import numpy as np

from diswm.presets import load_config
from learner.learner import Learner
from learner.evaluator import evaluate

out = {}
for seed in range(5):
    cfg = load_config(["quickstart", "finger_spin_to_cartpole_swingup"], [f"train.seed={seed}"])
    learner = Learner(cfg, 1)  # no teacher: the policy needs none; weights as make run's start
    returns = evaluate(cfg, learner, 4, "B", seed=123)
    out[seed] = returns
    print(f"init seed {seed}: mean {np.mean(returns):.1f}  "
          f"({', '.join(f'{r:.1f}' for r in returns)})", flush=True)
allr = [r for v in out.values() for r in v]
print(f"all: mean {np.mean(allr):.1f} +- {np.std(allr):.1f} over {len(allr)} episodes")
json.dump({"returns_by_init_seed": out, "mean": float(np.mean(allr)),
           "std": float(np.std(allr))}, sys.stdout if len(sys.argv) < 2 else open(sys.argv[1], "w"),
          indent=1)
