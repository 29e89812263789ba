"""DeepMind Control Suite tasks (`dmc:<domain>_<task>`)."""

from __future__ import annotations

import logging

import numpy as np

from diswm.envs.core import Backend

# Dreamer's camera choice: camera 0 everywhere except quadruped, which needs its camera 2.
_DEFAULT_CAMERA = {"quadruped": 2}


class _QuietCompilerWarnings(logging.Filter):
    """dm_control's models use MJCF attributes that MuJoCo 3.x deprecates; one warning per env
    load drowns real output, so drop just those."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is deprecated and will be removed" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietCompilerWarnings())


def dmc_tasks() -> dict[str, tuple[str, str]]:
    """Task id suffix (``cheetah_run``) -> (domain, task) for every dm_control suite task."""
    from dm_control import suite

    return {f"{domain}_{task}": (domain, task) for domain, task in suite.ALL_TASKS}


class DMCBackend(Backend):
    drift = True

    def __init__(self, domain: str, task: str, *, seed: int, camera: int = -1):
        from dm_control import suite

        # Our own time limit (DistractedEnv) replaces the suite's, so episodes can be shortened.
        self._env = suite.load(domain, task, task_kwargs={"random": seed,
                                                          "time_limit": float("inf")})
        self._physics = self._env.physics
        spec = self._env.action_spec()
        self.action_low = np.asarray(spec.minimum, np.float64) * np.ones(spec.shape)
        self.action_high = np.asarray(spec.maximum, np.float64) * np.ones(spec.shape)
        self.default_time_limit = 1000  # every suite benchmark task is 1000 control steps long
        self.model = self._physics.model.ptr
        self.data = self._physics.data.ptr
        self.camera = camera if camera >= 0 else _DEFAULT_CAMERA.get(domain, 0)
        if self.camera >= self._physics.model.ncam:
            raise ValueError(f"dmc:{domain}_{task} has {self._physics.model.ncam} cameras; "
                             f"camera {self.camera} does not exist")

    def reset(self) -> None:
        self._env.reset()

    def control_step(self, action: np.ndarray) -> tuple[float, bool]:
        ts = self._env.step(action)
        return float(ts.reward or 0.0), bool(ts.last() and ts.discount == 0.0)

    def state(self) -> np.ndarray:
        return self._physics.get_state().astype(np.float32)

    def colour_groups(self) -> tuple[np.ndarray, list[list[int]]]:
        # Every material independently: body, effectors, decorations, target, floor tint...
        rgba = self._physics.model.mat_rgba
        return rgba, [[i] for i in range(rgba.shape[0])]
