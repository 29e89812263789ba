"""`diswm bench envs`: env steps/s with the default scene, the fast scene, and raw physics.

All three step the same task with the same uniform-random actions, interleaved round by round.
The key figure is ``fast_render_speedup`` = fast-scene env steps/s / default-scene env steps/s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from diswm.config import Config
from diswm.envs import make_env
from ops.bench.common import interleaved_rates, write_report


def _env_stepper(env, rng: np.random.Generator) -> Callable[[int], int]:
    """Steps `env` for `n` agent steps; returns env (control) steps taken."""
    state = {"obs": env.reset()}

    def run(n: int) -> int:
        done = 0
        for _ in range(n):
            before = env.episode_env_steps
            if state["obs"]["is_last"]:
                state["obs"] = env.reset()
                before = 0
            state["obs"] = env.step(rng.uniform(-1, 1, env.act_space.shape))
            done += env.episode_env_steps - before
        return done

    return run


def _physics_stepper(env, rng: np.random.Generator) -> Callable[[int], int]:
    """Raw simulator control steps: no rendering, no distraction, no wrappers."""
    backend = env._backend  # noqa: SLF001 - the baseline deliberately bypasses the wrapper
    backend.reset()
    low, high = backend.action_low, backend.action_high
    repeat = env._repeat  # noqa: SLF001

    def run(n: int) -> int:
        for _ in range(n * repeat):
            backend.control_step(rng.uniform(low, high))
        return n * repeat

    return run


def bench_envs(cfg: Config, *, steps: int = 300, rounds: int = 5, json_path=None,
               progress=print) -> dict[str, Any]:
    qualities = ("full", "no_shadows", "fast")
    envs = {q: make_env(dataclasses.replace(cfg.env, render_quality=q), cfg.distraction,
                        seed=cfg.train.seed) for q in qualities}
    try:
        rng = np.random.default_rng(cfg.train.seed)
        cases = {f"{q}_render": _env_stepper(envs[q], rng) for q in qualities}
        cases["physics_only"] = _physics_stepper(envs["fast"], rng)
        rates = interleaved_rates(cases, steps, rounds, progress)
    finally:
        for env in envs.values():
            env.close()
    full = rates["full_render"]["median"]
    payload = {
        "bench": "envs",
        "task": cfg.env.task,
        "size": cfg.env.size,
        "action_repeat": cfg.env.action_repeat,
        "distraction": cfg.distraction.enabled,
        "agent_steps_per_round": steps,
        "rounds": rounds,
        "unit": "env (control) steps per second, one process, one core",
        "baseline": "full_render (dm_control's default scene: shadows and reflections)",
        "env_steps_per_s": rates,
        "fast_render_speedup": rates["fast_render"]["median"] / full,
        "no_shadows_speedup": rates["no_shadows_render"]["median"] / full,
        "physics_only_vs_full_render": rates["physics_only"]["median"] / full,
    }
    return write_report(json_path, payload)
