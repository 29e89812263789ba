"""Evaluation off the learner: episodes on a snapshot of the weights, in a Ray actor of its own.

    snapshot = evaluation_snapshot(learner, point=5000, env_steps=5012, scheme="A", seed=...)
    row = Evaluator(cfg.to_dict(), action_dim, run_dir).evaluate(snapshot)   # the same code,
    ref = ray.remote(Evaluator).remote(...).evaluate.remote(snapshot)       # in or out of process

A snapshot holds the world model's and the actor-critic's weights at the scheduled env step
(learner/schedule.py) and the colour scheme in force then; the distributed learner hands it to
its `Evaluator` actor and keeps training, collecting the rows in order as they finish
(learner/service.py). An evaluation is a pure function of the snapshot: its episodes and the
policy's sampling are seeded from the snapshot's seed inside a forked RNG, so a remote evaluation
equals a local one, and evaluating inside a process never moves that process's random streams.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diswm.config import build_config, replace
from learner.learner import Learner


def evaluation_snapshot(learner: Learner, *, point: int, env_steps: int, scheme: str,
                        seed: int) -> dict[str, Any]:
    """What an evaluation needs, copied off the learner (CPU tensors: it may travel)."""
    def cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}

    return {"point": int(point), "env_steps": int(env_steps), "updates": learner.updates,
            "version": learner.version, "scheme": scheme, "seed": int(seed),
            "wm": cpu(learner.wm), "ac": cpu(learner.ac), "taken": time.time()}


class Evaluator:
    def __init__(self, cfg_dict: dict, action_dim: int, run_dir: str | Path,
                 threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        cfg = build_config(cfg_dict)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        # The world model and actor only: no teacher file, no optimizer steps, on the CPU.
        local = replace(cfg, distill={"teacher": "", "enabled": False, "finetune": False},
                        train={"device": "cpu", "compile": False})
        self.learner = Learner(local, action_dim, device="cpu")

    def evaluate(self, snapshot: dict[str, Any]) -> dict[str, Any]:
        from learner.serial import evaluate_recorded, open_loop_eval

        cfg, learner = self.cfg, self.learner
        learner.wm.load_state_dict(snapshot["wm"])
        learner.ac.load_state_dict(snapshot["ac"])
        learner.updates, learner.version = snapshot["updates"], snapshot["version"]
        scheme, env_steps = snapshot["scheme"], snapshot["env_steps"]
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(snapshot["seed"])
            returns, recording = evaluate_recorded(cfg, learner, cfg.train.eval_episodes, scheme,
                                                   seed=snapshot["seed"])
            openl = open_loop_eval(learner, recording, self.run_dir, env_steps,
                                   f"{cfg.env.task}, env step {env_steps}, scheme {scheme}, "
                                   f"{snapshot['updates']} updates")
        return {"eval_step": snapshot["point"], "env_steps": env_steps,
                "updates": snapshot["updates"], "scheme": scheme,
                "return_mean": float(np.mean(returns)), "return_min": float(np.min(returns)),
                "return_max": float(np.max(returns)), "episodes": len(returns),
                "eval_seconds": round(time.perf_counter() - start, 3), **openl}

    def pid(self) -> int:
        import os

        return os.getpid()
