"""One observation/step interface for every task: the distracted, action-repeated env.

The loop it lives in (dreamerv3's embodied style, flags inside the observation)::

    env = make_env(cfg.env, cfg.distraction, seed=0)
    obs = env.reset()                      # obs["is_first"] is True
    while not obs["is_last"]:
        obs = env.step(policy(obs))        # action in [-1, 1]^A; reward summed over the repeat
    env.set_scheme("B")                    # switch colours for good (also mid-episode)

Observation keys (see `obs_space`): ``image`` (H, W, 3) uint8, ``reward`` float32, ``is_first``,
``is_last``, ``is_terminal`` bool, and the ground-truth factors ``colours`` (3 per colour group,
float32) and ``state`` (physical state: qpos, qvel, ... float32).

An env renders through its own GL context, which (with EGL) is current in one thread only: build,
step and close an env in the same thread.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from diswm.envs.distraction import ColourDistraction
from diswm.envs.rendering import FreeCamera, SceneRenderer


@dataclass(frozen=True)
class Space:
    dtype: np.dtype
    shape: tuple[int, ...]
    low: float | None = None
    high: float | None = None


class Backend(abc.ABC):
    """A simulator the distracted env drives one control step at a time (native action units)."""

    default_time_limit: int  # env (control) steps per episode
    action_low: np.ndarray
    action_high: np.ndarray
    model: object  # mujoco.MjModel
    data: object  # mujoco.MjData
    camera: int | FreeCamera
    drift: bool  # whether colours drift every step or are drawn only at reset

    @abc.abstractmethod
    def reset(self) -> None: ...

    @abc.abstractmethod
    def control_step(self, action: np.ndarray) -> tuple[float, bool]:
        """Advance one control step; returns (reward, terminal)."""

    @abc.abstractmethod
    def state(self) -> np.ndarray: ...

    @abc.abstractmethod
    def colour_groups(self) -> tuple[np.ndarray, list[list[int]]]:
        """The model's RGBA table to distract and the rows that share each colour draw."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class DistractedEnv:
    """Action repeat, time limit, [-1, 1] actions, colour distraction and rendering over a Backend."""

    def __init__(self, task: str, backend: Backend, *, size: int, action_repeat: int,
                 time_limit: int, render_quality: str, distraction: ColourDistraction | None):
        self.task = task
        self._backend = backend
        self._repeat = action_repeat
        self.time_limit = time_limit or backend.default_time_limit
        self._renderer = SceneRenderer(backend.model, size, backend.camera, render_quality)
        self._distraction = distraction
        self._low = backend.action_low.astype(np.float64)
        self._high = backend.action_high.astype(np.float64)
        self._env_steps = 0
        self._done = True
        num_colours = distraction.num_factors if distraction else 0
        self.obs_space = {
            "image": Space(np.dtype(np.uint8), (size, size, 3), 0, 255),
            "reward": Space(np.dtype(np.float32), ()),
            "is_first": Space(np.dtype(bool), ()),
            "is_last": Space(np.dtype(bool), ()),
            "is_terminal": Space(np.dtype(bool), ()),
            "colours": Space(np.dtype(np.float32), (num_colours,), 0.0, 1.0),
            "state": Space(np.dtype(np.float32), backend.state().shape),
        }
        self.act_space = Space(np.dtype(np.float32), self._low.shape, -1.0, 1.0)

    # -- the interface ---------------------------------------------------------------------
    @property
    def scheme(self) -> str | None:
        return self._distraction.scheme if self._distraction else None

    @property
    def episode_env_steps(self) -> int:
        """Env (control) steps taken in the current episode."""
        return self._env_steps

    def reset(self) -> dict[str, np.ndarray]:
        self._backend.reset()
        if self._distraction:
            self._distraction.reset()
        self._env_steps = 0
        self._done = False
        return self._obs(0.0, is_first=True, is_last=False, is_terminal=False)

    def step(self, action) -> dict[str, np.ndarray]:
        if self._done:
            raise RuntimeError(f"{self.task}: step() after the episode ended; call reset() first")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.act_space.shape:
            raise ValueError(f"{self.task}: action shape {action.shape} != {self.act_space.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"{self.task}: action has non-finite values: {action}")
        native = self._low + (np.clip(action, -1.0, 1.0) + 1.0) * 0.5 * (self._high - self._low)
        reward, terminal = 0.0, False
        for _ in range(self._repeat):
            r, terminal = self._backend.control_step(native)
            reward += r  # summed over the repeat (the released code doubled instead)
            self._env_steps += 1
            if terminal or self._env_steps >= self.time_limit:
                break
        if self._distraction:
            self._distraction.step()
        self._done = terminal or self._env_steps >= self.time_limit
        return self._obs(reward, is_first=False, is_last=self._done, is_terminal=terminal)

    def set_scheme(self, scheme: str) -> None:
        """Switch to colour scheme `scheme`; the next observation already uses it."""
        if self._distraction is None:
            raise RuntimeError(f"{self.task}: distraction is disabled; cannot set a scheme")
        self._distraction.set_scheme(scheme)

    def render(self) -> np.ndarray:
        return self._renderer.render(self._backend.data)

    def close(self) -> None:
        self._renderer.close()
        self._backend.close()

    def __enter__(self) -> DistractedEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------
    def _obs(self, reward: float, *, is_first: bool, is_last: bool, is_terminal: bool) -> dict:
        colours = (self._distraction.factors() if self._distraction
                   else np.zeros((0,), np.float32))
        return {
            "image": self.render(),
            "reward": np.float32(reward),
            "is_first": np.bool_(is_first),
            "is_last": np.bool_(is_last),
            "is_terminal": np.bool_(is_terminal),
            "colours": colours,
            "state": self._backend.state(),
        }
