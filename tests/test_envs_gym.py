"""`gym:<id>`: any Gymnasium MuJoCo env through the same interface as DMC and Pusher, a user's own
(a package written here and imported by `env.gym_import`) and Gymnasium's, with the colour
distraction through the model's geom colours; bad envs are refused in one line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from diswm.config import replace
from diswm.envs import make_env
from diswm.presets import load_config

ROOT = Path(__file__).resolve().parents[1]

# A user's package: one MuJoCo env (a ball pushed on a floor toward the origin), registered
# when the package is imported, as a user's own envs would be.
PACKAGE = '''
import os, tempfile
import numpy as np
import gymnasium
from gymnasium.envs.mujoco import MujocoEnv
from gymnasium.spaces import Box

XML = """
<mujoco>
  <worldbody>
    <light pos="0 0 3"/>
    <geom name="floor" type="plane" size="2 2 0.1" rgba="0.8 0.8 0.8 1"/>
    <geom name="wall" type="box" pos="0 1.5 0.1" size="1.5 0.05 0.1" rgba="0.5 0.5 0.5 1"/>
    <body name="ball" pos="0.5 0.5 0.1">
      <joint name="x" type="slide" axis="1 0 0"/>
      <joint name="y" type="slide" axis="0 1 0"/>
      <geom name="ball" type="sphere" size="0.1" rgba="0.9 0.1 0.1 1" mass="1"/>
    </body>
  </worldbody>
  <actuator>
    <motor joint="x" gear="40" ctrlrange="-1 1"/>
    <motor joint="y" gear="40" ctrlrange="-1 1"/>
  </actuator>
</mujoco>
"""


class BallEnv(MujocoEnv):
    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 250}

    def __init__(self, **kwargs):
        path = os.path.join(tempfile.mkdtemp(prefix="ball-"), "ball.xml")
        with open(path, "w") as f:
            f.write(XML)
        super().__init__(path, 2, Box(-np.inf, np.inf, (4,), np.float64), **kwargs)

    def step(self, action):
        self.do_simulation(action, self.frame_skip)
        reward = -float(np.linalg.norm(self.data.qpos))
        return self._get_obs(), reward, False, False, {}

    def _get_obs(self):
        return np.concatenate([self.data.qpos, self.data.qvel])

    def reset_model(self):
        noise = self.np_random.uniform(-0.3, 0.3, size=2)
        self.set_state(self.init_qpos + noise, self.init_qvel)
        return self._get_obs()


class HumanOnly(BallEnv):
    metadata = {"render_modes": ["human"], "render_fps": 250}


gymnasium.register("DiswmBall-v0", entry_point=BallEnv, max_episode_steps=40)
gymnasium.register("DiswmHumanOnly-v0", entry_point=HumanOnly, max_episode_steps=40)
'''


@pytest.fixture
def package(tmp_path, monkeypatch):
    (tmp_path / "diswm_test_ball").mkdir()
    (tmp_path / "diswm_test_ball" / "__init__.py").write_text(textwrap.dedent(PACKAGE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def config(task, *more):
    return load_config(["tiny"], [f"env.task={task}", "env.gym_import=diswm_test_ball",
                                  "distraction.enabled=true", "env.time_limit=0", *more])


def test_a_users_own_mujoco_env_runs_distracted(package):
    import gymnasium

    cfg = config("gym:DiswmBall-v0")
    with make_env(cfg.env, cfg.distraction, seed=3) as env:
        assert env.act_space.shape == (2,) and env.time_limit == 40  # its registration's
        obs = env.reset()
        assert obs["image"].shape == (64, 64, 3) and obs["colours"].shape == (6,)  # 2 groups
        first_colours = obs["colours"].copy()
        rewards, actions, frames = [], [], [obs["image"]]
        rng = np.random.default_rng(0)
        while not obs["is_last"]:
            actions.append(rng.uniform(-1, 1, 2).astype(np.float32))
            obs = env.step(actions[-1])
            rewards.append(float(obs["reward"]))
            frames.append(obs["image"])
        assert len(rewards) == 40 // cfg.env.action_repeat
        moved = np.abs(frames[-1].astype(int) - frames[0].astype(int))
        assert moved.max() > 30 and (moved.max(axis=2) > 30).mean() < 0.2  # the ball, not all
        env.set_scheme("B")
        assert not np.allclose(env.reset()["colours"], first_colours)
    # The rewards are the env's own: replay the actions on the plain Gymnasium env (actions in
    # [-1, 1] equal its native range here; rewards summed over the action repeat).
    raw = gymnasium.make("DiswmBall-v0").unwrapped
    raw.reset(seed=3)
    expected = [sum(raw.step(a)[1] for _ in range(cfg.env.action_repeat)) for a in actions]
    np.testing.assert_allclose(rewards, expected, rtol=1e-5)
    raw.close()


def test_gymnasiums_own_mujoco_task():
    cfg = load_config(["tiny"], ["env.task=gym:InvertedPendulum-v5", "env.time_limit=20"])
    with make_env(cfg.env, cfg.distraction, seed=0) as env:
        obs = env.reset()
        assert env.act_space.shape == (1,) and obs["state"].shape == (4,)
        steps = 0
        while not obs["is_last"]:
            obs = env.step(np.zeros(1, np.float32))
            steps += 1
        assert 1 <= steps <= 10 and obs["image"].std() > 5  # a rendered scene, not a blank


@pytest.mark.parametrize(("task", "message"), [
    ("gym:DiswmNoSuch-v0", "gym:DiswmNoSuch-v0: no Gymnasium env 'DiswmNoSuch-v0' is registered"),
    ("gym:DiswmHumanOnly-v0", "gym:DiswmHumanOnly-v0: the env does not render rgb_array"),
    ("gym:CartPole-v1", "gym:CartPole-v1: the action space is Discrete(2), not a Box"),
    ("gym:Pendulum-v1", "gym:Pendulum-v1: not a MuJoCo env"),
])
def test_an_env_diswm_cannot_drive_is_refused_naming_it(package, task, message):
    cfg = config(task)
    with pytest.raises(ValueError) as info:
        make_env(cfg.env, cfg.distraction, seed=0)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_a_bad_import_and_a_bad_id_are_one_line_errors_at_start(tmp_path):
    cfg = replace(load_config(["tiny"]), env={"task": "gym:DiswmBall-v0",
                                              "gym_import": "no_such_package_xyz"})
    with pytest.raises(ValueError, match=r"env.gym_import: cannot import 'no_such_package_xyz'"):
        make_env(cfg.env, cfg.distraction, seed=0)
    out = subprocess.run([sys.executable, "-m", "ops", "train", "--serial", "--config", "tiny",
                          "--run-dir", str(tmp_path / "run"), "--set", "env.task=gym:NoSuch-v9"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1].startswith(
        "diswm: error: gym:NoSuch-v9: no Gymnasium env 'NoSuch-v9' is registered")
