"""The colour-distracted environment suite: `dmc:<domain>_<task>`, `mujoco:pusher`, and any
Gymnasium MuJoCo env as `gym:<id>` (a user's own, registered by `env.gym_import`).

    env = make_env(cfg.env, cfg.distraction, seed=0)   # see diswm.envs.core for the loop
"""

from __future__ import annotations

import functools

import numpy as np

from diswm.envs.core import Backend, DistractedEnv, Space
from diswm.envs.distraction import SCHEMES, ColourDistraction
from diswm.envs.rendering import configure_gl

#: The tasks of the paper's transfer table (DESIGN.md section 1).
PAPER_TASKS = ("dmc:cheetah_run", "dmc:walker_walk", "dmc:hopper_stand", "dmc:reacher_easy",
               "dmc:finger_spin", "dmc:cartpole_swingup", "mujoco:pusher")
MUJOCO_TASKS = ("mujoco:pusher",)


@functools.cache
def list_tasks() -> tuple[str, ...]:
    """Every valid task id.

    On a host without dm_control (a learner-only GPU node) the paper's tasks are the valid ids:
    the learner needs only the task's name, and building an env there fails on its own import.
    """
    configure_gl()
    from diswm.envs.dmc import dmc_tasks

    try:
        dmc_tasks()
    except ImportError:
        return PAPER_TASKS
    return tuple(f"dmc:{name}" for name in dmc_tasks()) + MUJOCO_TASKS


def validate_task_id(task: str) -> str:
    """Return `task` if valid, else raise ValueError listing the valid ids. A `gym:<id>` is
    checked when its env is made (its registration may need `env.gym_import`)."""
    if isinstance(task, str) and task.startswith("gym:") and len(task) > len("gym:"):
        return task
    if not isinstance(task, str) or task not in list_tasks():
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(list_tasks())}, "
                         "or gym:<id> for a Gymnasium MuJoCo env")
    return task


def make_env(env_cfg, distraction_cfg, *, seed: int, task: str | None = None) -> DistractedEnv:
    """Build the distracted env for `task` (default `env_cfg.task`) with a deterministic `seed`.

    `env_cfg` is an `EnvConfig`, `distraction_cfg` a `DistractionConfig`.
    """
    task = validate_task_id(task or env_cfg.task)
    configure_gl()
    backend: Backend
    if task.startswith("dmc:"):
        from diswm.envs.dmc import DMCBackend, dmc_tasks

        domain, name = dmc_tasks()[task[len("dmc:"):]]
        backend = DMCBackend(domain, name, seed=seed, camera=env_cfg.camera)
    elif task.startswith("gym:"):
        from diswm.envs.gym import GymBackend

        backend = GymBackend(task[len("gym:"):], seed=seed, camera=env_cfg.camera,
                             imports=env_cfg.gym_import)
    else:
        from diswm.envs.pusher import PusherBackend

        backend = PusherBackend(seed=seed, camera=env_cfg.camera)
    distraction = None
    if distraction_cfg.enabled:
        rgba, groups = backend.colour_groups()
        distraction = ColourDistraction(
            rgba, groups, scheme=distraction_cfg.scheme, box=distraction_cfg.box,
            step_std=distraction_cfg.step_std, drift=backend.drift,
            rng=np.random.default_rng([seed, 0x5EED]))
    return DistractedEnv(task, backend, size=env_cfg.size, action_repeat=env_cfg.action_repeat,
                         time_limit=env_cfg.time_limit, render_quality=env_cfg.render_quality,
                         distraction=distraction)


__all__ = ["PAPER_TASKS", "SCHEMES", "DistractedEnv", "Space", "list_tasks", "make_env",
           "validate_task_id"]
