"""Any Gymnasium environment rendered with MuJoCo (`gym:<id>`), the user's own included.

    --set env.task=gym:HalfCheetah-v5
    --set env.task=gym:MyBall-v0 env.gym_import=mypkg.envs   # a package that registers it

The env is made with ``gymnasium.make(id, render_mode="rgb_array")`` after importing the modules
in `env.gym_import` (comma-separated: a user's package registers its envs when imported), and
driven through its unwrapped MuJoCo env (``.model``, ``.data``, ``.step``), as `mujoco:pusher`
is: the interface's own time limit (the registration's ``max_episode_steps`` by default), action
repeat and [-1, 1] actions apply. Frames come from diswm's renderer (the same 64 × 64 RGB as
every task) from camera `env.camera`; by default the model's first camera, or where it has none,
a free camera with the env's own viewer settings (``default_camera_config``) over MuJoCo's
default (look-at the model's centre, 1.5 times its extent away, elevation −45). The colour distraction draws two colours at each
reset, through the model's geom colours: one for the world body's geoms (floor, walls, static
scenery) and one for every other geom (the agent and the objects it moves); both are recorded
as the observation's ``colours`` factors.

Refused at start, in one line naming the env: an id that is not registered, an env without
``rgb_array`` rendering, one not built on MuJoCo, and an action space that is not a bounded Box.
"""

from __future__ import annotations

import importlib

import numpy as np

from diswm.envs.core import Backend
from diswm.envs.rendering import FreeCamera

PREFIX = "gym:"


def import_modules(modules: str) -> None:
    """Import each module of `modules` (comma-separated); ValueError naming one that fails."""
    for name in (m.strip() for m in modules.split(",") if m.strip()):
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - any failure of the user's import is named
            raise ValueError(f"env.gym_import: cannot import {name!r} ({type(err).__name__}: "
                             f"{err})"[:300]) from None


class GymnasiumSteps(Backend):
    """Reset, step and state of an unwrapped Gymnasium MuJoCo env in ``self._env`` (seeded
    with ``self._seed`` at the first reset): shared by `mujoco:pusher` and `gym:<id>`."""

    _env: object
    _seed: int | None

    def reset(self) -> None:
        # Seed once; later resets continue the env's own generator (deterministic per seed).
        self._env.reset(seed=self._seed)
        self._seed = None

    def control_step(self, action: np.ndarray) -> tuple[float, bool]:
        _, reward, terminated, _, _ = self._env.step(action.astype(np.float32))
        return float(reward), bool(terminated)

    def state(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float32)


class GymBackend(GymnasiumSteps):
    """A Gymnasium MuJoCo env (`gymnasium.envs.mujoco.MujocoEnv` or anything with its
    ``model``/``data``) as a `Backend`. Colours are drawn at reset only (no per-step drift)."""

    drift = False

    def __init__(self, env_id: str, *, seed: int, camera: int = -1, imports: str = ""):
        import gymnasium
        from gymnasium.spaces import Box

        import_modules(imports)
        task = f"{PREFIX}{env_id}"
        if env_id not in gymnasium.registry:
            hint = (" (env.gym_import names the package that registers it)" if not imports
                    else f" (after importing {imports})")
            raise ValueError(f"{task}: no Gymnasium env {env_id!r} is registered{hint}")
        spec = gymnasium.spec(env_id)
        creator = (spec.entry_point if callable(spec.entry_point)
                   else gymnasium.envs.registration.load_env_creator(spec.entry_point))
        modes = getattr(creator, "metadata", {}).get("render_modes", [])
        if "rgb_array" not in modes:
            raise ValueError(f"{task}: the env does not render rgb_array frames (its render "
                             f"modes: {list(modes) or 'none'})")
        env = gymnasium.make(env_id, render_mode="rgb_array")
        base = env.unwrapped
        if not isinstance(env.action_space, Box):
            env.close()
            raise ValueError(f"{task}: the action space is {env.action_space}, not a Box; "
                             "diswm's agents act in continuous [-1, 1] actions")
        low, high = env.action_space.low, env.action_space.high
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            env.close()
            raise ValueError(f"{task}: the action space {env.action_space} is unbounded")
        try:
            import mujoco

            ok = isinstance(base.model, mujoco.MjModel) and isinstance(base.data, mujoco.MjData)
        except AttributeError:
            ok = False
        if not ok:
            env.close()
            raise ValueError(f"{task}: not a MuJoCo env (no mujoco model and data on "
                             f"{type(base).__name__}); diswm renders and distracts through them")
        self._wrapped, self._env = env, base  # stepped unwrapped: our own time limit applies
        self._seed: int | None = seed
        self.model, self.data = base.model, base.data
        self.action_low = low.astype(np.float64)
        self.action_high = high.astype(np.float64)
        self.default_time_limit = int(spec.max_episode_steps or 1000)
        if camera >= 0:
            if camera >= self.model.ncam:
                raise ValueError(f"{task} has {self.model.ncam} cameras; camera {camera} does "
                                 "not exist")
            self.camera = camera
        elif self.model.ncam:  # the model's first camera (HalfCheetah's tracks its body)
            self.camera = 0
        else:  # the env's own viewer settings over MuJoCo's default free camera
            stat = self.model.stat
            given = dict(getattr(getattr(base, "mujoco_renderer", None), "default_cam_config",
                                 None) or {})
            self.camera = FreeCamera(
                distance=float(given.get("distance", 1.5 * float(stat.extent))),
                azimuth=float(given.get("azimuth", 90.0)),
                elevation=float(given.get("elevation", -45.0)),
                lookat=tuple(float(x) for x in given.get("lookat", stat.center)))
        world = [g for g in range(self.model.ngeom) if self.model.geom_bodyid[g] == 0]
        rest = [g for g in range(self.model.ngeom) if self.model.geom_bodyid[g] != 0]
        self._groups = [group for group in (world, rest) if group]

    def colour_groups(self) -> tuple[np.ndarray, list[list[int]]]:
        return self.model.geom_rgba, self._groups

    def close(self) -> None:
        self._wrapped.close()
