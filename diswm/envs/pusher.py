"""gymnasium's MuJoCo Pusher-v5 seen from a top-down camera (`mujoco:pusher`)."""

from __future__ import annotations

import numpy as np

from diswm.envs.gym import GymnasiumSteps
from diswm.envs.rendering import FreeCamera

TOP_DOWN = FreeCamera(distance=2.0, azimuth=90.0, elevation=-90.0, lookat=(0.0, -0.5, 0.2))
_ARM_BODY_PREFIXES = ("r_", "tips_arm")


class PusherBackend(GymnasiumSteps):
    """Arm geoms share one colour draw and the table gets its own, at each reset; the object is
    black. No per-step drift (DESIGN.md section 1)."""

    drift = False
    default_time_limit = 100  # gymnasium's 100 env steps = 50 agent steps at action repeat 2

    def __init__(self, *, seed: int, camera: int = -1):
        import gymnasium
        import mujoco

        self._env = gymnasium.make("Pusher-v5").unwrapped  # no TimeLimit/checker wrappers
        self._seed: int | None = seed
        self.model = self._env.model
        self.data = self._env.data
        self.action_low = self._env.action_space.low.astype(np.float64)
        self.action_high = self._env.action_space.high.astype(np.float64)
        if camera >= 0:
            if camera >= self.model.ncam:
                raise ValueError(f"mujoco:pusher has {self.model.ncam} cameras; "
                                 f"camera {camera} does not exist")
            self.camera = camera
        else:
            self.camera = TOP_DOWN
        geom_body = [self.model.body(self.model.geom_bodyid[g]).name
                     for g in range(self.model.ngeom)]
        self._arm = [g for g, b in enumerate(geom_body) if b.startswith(_ARM_BODY_PREFIXES)]
        self._table = [mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, "table")]
        objects = [g for g, b in enumerate(geom_body) if b == "object"]
        if not self._arm or self._table[0] < 0 or not objects:
            raise RuntimeError("Pusher-v5's model changed: arm, table or object geoms not found")
        self.model.geom_rgba[objects] = (0.0, 0.0, 0.0, 1.0)

    def colour_groups(self) -> tuple[np.ndarray, list[list[int]]]:
        return self.model.geom_rgba, [self._arm, self._table]

    def close(self) -> None:
        self._env.close()
