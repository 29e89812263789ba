"""The colour-distracted env suite, on real dm_control and gymnasium/MuJoCo with headless GL."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from diswm.config import ConfigError
from diswm.envs import PAPER_TASKS, list_tasks, make_env, validate_task_id
from diswm.envs.distraction import SCHEMES, scheme_box
from diswm.presets import load_config


@pytest.fixture(scope="module")
def cfg():
    return load_config()


def _env(cfg, task="dmc:cheetah_run", seed=0, **changes):
    env_changes = {k: v for k, v in changes.items() if k in {f.name for f in
                                                            dataclasses.fields(cfg.env)}}
    dis_changes = {k: v for k, v in changes.items() if k not in env_changes}
    return make_env(dataclasses.replace(cfg.env, **env_changes),
                    dataclasses.replace(cfg.distraction, **dis_changes), seed=seed, task=task)


def _actions(n, dim, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, dim))


@pytest.mark.parametrize("task", PAPER_TASKS)
def test_spaces_and_dtypes(cfg, task):
    with _env(cfg, task) as env:
        obs = env.reset()
        assert set(obs) == set(env.obs_space)
        for key, space in env.obs_space.items():
            value = np.asarray(obs[key])
            assert value.dtype == space.dtype, key
            assert value.shape == space.shape, key
        assert obs["image"].shape == (64, 64, 3)
        assert obs["is_first"] and not obs["is_last"] and not obs["is_terminal"]
        assert obs["reward"] == 0.0
        assert env.act_space.low == -1.0 and env.act_space.high == 1.0
        obs = env.step(np.zeros(env.act_space.shape))
        assert not obs["is_first"] and obs["image"].std() > 0  # a real picture, not a blank
        assert np.isfinite(obs["reward"])


def test_action_repeat_sums_rewards_like_a_manual_dm_control_loop(cfg):
    """Our repeat-2 step == two steps of the raw dm_control suite env with the same seed."""
    from dm_control import suite

    raw = suite.load("cheetah", "run", task_kwargs={"random": 3})
    raw.reset()
    actions = _actions(30, 6, seed=1)
    with _env(cfg, seed=3) as env:
        env.reset()
        for action in actions:
            obs = env.step(action)
            expected = sum(raw.step(action).reward for _ in range(2))
            assert obs["reward"] == pytest.approx(expected, rel=1e-6, abs=1e-7)
        np.testing.assert_array_equal(obs["state"], raw.physics.get_state().astype(np.float32))


def test_action_repeat_sums_rewards_for_pusher(cfg):
    """Pusher: repeat-2 step == two gymnasium steps with the native action ([-1,1] -> [-2,2])."""
    import gymnasium

    raw = gymnasium.make("Pusher-v5").unwrapped
    raw.reset(seed=5)
    actions = _actions(20, 7, seed=2)
    with _env(cfg, "mujoco:pusher", seed=5) as env:
        env.reset()
        for action in actions:
            obs = env.step(action)
            expected = sum(raw.step((2.0 * action).astype(np.float32))[1] for _ in range(2))
            assert obs["reward"] == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_action_repeat_one_vs_two_same_trajectory(cfg):
    actions = _actions(10, 6)
    with _env(cfg, seed=1, action_repeat=1) as one, _env(cfg, seed=1, action_repeat=2) as two:
        one.reset(), two.reset()
        for action in actions:
            r1 = one.step(action)["reward"] + one.step(action)["reward"]
            obs2 = two.step(action)
            assert obs2["reward"] == pytest.approx(r1, rel=1e-6, abs=1e-7)
        np.testing.assert_array_equal(one.step(actions[0])["state"].shape, obs2["state"].shape)


def test_time_limit_and_episode_flags(cfg):
    with _env(cfg, time_limit=10) as env:
        obs = env.reset()
        flags = []
        while not obs["is_last"]:
            obs = env.step(np.zeros(6))
            flags.append(bool(obs["is_last"]))
        assert flags == [False] * 4 + [True]  # 10 env steps at action repeat 2
        assert env.episode_env_steps == 10
        assert not obs["is_terminal"]  # a time limit is not a terminal state
        with pytest.raises(RuntimeError, match="call reset"):
            env.step(np.zeros(6))
        assert env.reset()["is_first"]


def test_default_time_limits(cfg):
    with _env(cfg) as dmc, _env(cfg, "mujoco:pusher") as pusher:
        assert dmc.time_limit == 1000 and pusher.time_limit == 100
        obs, n = pusher.reset(), 0
        while not obs["is_last"]:
            obs, n = pusher.step(np.zeros(7)), n + 1
        assert n == 50


def test_bad_actions_are_rejected(cfg):
    with _env(cfg) as env:
        env.reset()
        with pytest.raises(ValueError, match="action shape"):
            env.step(np.zeros(5))
        with pytest.raises(ValueError, match="non-finite"):
            env.step(np.full(6, np.nan))


def test_out_of_range_actions_are_clipped(cfg):
    with _env(cfg, seed=2, step_std=0.0) as a, _env(cfg, seed=2, step_std=0.0) as b:
        a.reset(), b.reset()
        np.testing.assert_array_equal(a.step(np.full(6, 5.0))["state"],
                                      b.step(np.full(6, 1.0))["state"])


@pytest.mark.parametrize("scheme", ["A", "B"])
def test_colours_stay_in_the_scheme_box(cfg, scheme):
    low, high = scheme_box(scheme, 0.2)
    with _env(cfg, scheme=scheme, seed=4) as env:
        seen = []
        for _ in range(3):
            obs = env.reset()
            for action in _actions(40, 6):
                colours = obs["colours"].reshape(-1, 3)
                assert np.all(colours >= low.astype(np.float32) - 1e-6)
                assert np.all(colours <= high.astype(np.float32) + 1e-6)
                # What the factors say is what the model renders.
                np.testing.assert_allclose(env._backend.model.mat_rgba[:, :3], colours, atol=1e-6)
                seen.append(colours)
                obs = env.step(action)
        mean = np.mean(seen, axis=(0, 1))
        np.testing.assert_allclose(mean, SCHEMES[scheme], atol=0.05)


def test_schemes_differ_as_specified():
    np.testing.assert_allclose(SCHEMES["A"], (0.7, 0.3, 0.5))
    np.testing.assert_allclose(SCHEMES["B"], (0.5, 0.7, 0.3))
    low_a, high_a = scheme_box("A", 0.2)
    low_b, high_b = scheme_box("B", 0.2)
    np.testing.assert_allclose([low_a, high_a], [[0.5, 0.1, 0.3], [0.9, 0.5, 0.7]])
    np.testing.assert_allclose([low_b, high_b], [[0.3, 0.5, 0.1], [0.7, 0.9, 0.5]])
    np.testing.assert_allclose(scheme_box("A", 0.5)[1], [1.0, 0.8, 1.0])  # clipped to [0, 1]


def test_drift_follows_step_std(cfg):
    with _env(cfg, step_std=0.05, seed=1) as drifting, _env(cfg, step_std=0.0, seed=1) as still:
        c0, s0 = drifting.reset()["colours"], still.reset()["colours"]
        c1, s1 = drifting.step(np.zeros(6))["colours"], still.step(np.zeros(6))["colours"]
        assert not np.allclose(c0, c1)
        np.testing.assert_array_equal(s0, s1)
        # Per-step changes are of the configured size (before clipping shrinks some).
        assert 0.01 < np.std(c1 - c0) < 0.06


def test_reset_draws_new_colours(cfg):
    with _env(cfg, step_std=0.0) as env:
        assert not np.allclose(env.reset()["colours"], env.reset()["colours"])


def test_switching_scheme_mid_episode_takes_effect(cfg):
    with _env(cfg, scheme="A", seed=6) as env:
        env.reset()
        for action in _actions(5, 6):
            obs_a = env.step(action)
        assert env.scheme == "A"
        env.set_scheme("B")
        obs_b = env.step(np.zeros(6))
        assert env.scheme == "B" and not obs_b["is_first"]
        green = obs_b["colours"].reshape(-1, 3)[:, 1]
        assert np.all(green >= 0.5 - 1e-6)  # B's green channel is in [0.5, 0.9]
        assert np.all(obs_a["colours"].reshape(-1, 3)[:, 1] <= 0.5 + 1e-6)  # A's in [0.1, 0.5]
        # It stays B across resets, and the picture really changes colour.
        assert np.all(env.reset()["colours"].reshape(-1, 3)[:, 1] >= 0.5 - 1e-6)
        assert obs_b["image"][..., 1].mean() > obs_a["image"][..., 1].mean()
        with pytest.raises(ValueError, match="unknown colour scheme 'C'"):
            env.set_scheme("C")


def test_distraction_disabled_keeps_original_colours(cfg):
    with _env(cfg, enabled=False) as env:
        original = env._backend.model.mat_rgba.copy()
        obs = env.reset()
        obs = env.step(np.zeros(6))
        assert obs["colours"].shape == (0,)
        np.testing.assert_array_equal(env._backend.model.mat_rgba, original)
        with pytest.raises(RuntimeError, match="distraction is disabled"):
            env.set_scheme("B")


@pytest.mark.parametrize("task", ["dmc:cheetah_run", "mujoco:pusher"])
def test_same_seed_gives_identical_frames_and_factors(cfg, task):
    def run(seed):
        with _env(cfg, task, seed=seed) as env:
            dim = env.act_space.shape[0]
            out = [env.reset()]
            for i, action in enumerate(_actions(60, dim)):
                out.append(env.reset() if out[-1]["is_last"] else env.step(action))
                if i == 30:
                    env.set_scheme("B")
            return out

    first, second, other = run(11), run(11), run(12)
    for a, b in zip(first, second, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert not np.array_equal(first[0]["image"], other[0]["image"])
    assert not np.array_equal(first[0]["colours"], other[0]["colours"])


def test_pusher_colours(cfg):
    with _env(cfg, "mujoco:pusher", seed=3) as env:
        obs = env.reset()
        backend = env._backend
        arm_rgb, table_rgb = obs["colours"].reshape(2, 3)
        model = backend.model
        np.testing.assert_allclose(model.geom_rgba[backend._arm, :3], np.tile(arm_rgb, (len(backend._arm), 1)), atol=1e-6)
        np.testing.assert_allclose(model.geom_rgba[backend._table, :3][0], table_rgb, atol=1e-6)
        obj = [g for g in range(model.ngeom) if model.body(model.geom_bodyid[g]).name == "object"]
        np.testing.assert_array_equal(model.geom_rgba[obj], [[0, 0, 0, 1]])
        low, high = scheme_box("A", 0.2)
        assert np.all((obs["colours"].reshape(2, 3) >= low - 1e-6) & (obs["colours"].reshape(2, 3) <= high + 1e-6))
        # No per-step drift on Pusher; a new draw per reset.
        np.testing.assert_array_equal(env.step(np.zeros(7))["colours"], obs["colours"])
        assert not np.allclose(env.reset()["colours"], obs["colours"])


def test_pusher_renders_arm_moving(cfg):
    with _env(cfg, "mujoco:pusher", seed=0) as env:
        first = env.reset()["image"]
        for action in _actions(10, 7):
            obs = env.step(action)
        assert first.std() > 10
        assert np.abs(first.astype(int) - obs["image"]).mean() > 0.5


def test_render_quality_switch(cfg):
    images = {}
    for quality in ("full", "no_shadows", "fast"):
        with _env(cfg, seed=0, render_quality=quality) as env:
            images[quality] = env.reset()["image"]
    assert not np.array_equal(images["full"], images["fast"])  # shadows/reflections drawn
    assert images["full"].shape == images["fast"].shape == (64, 64, 3)


def test_renderer_matches_dm_control_render(cfg):
    """Our persistent renderer draws the same pixels as dm_control's own Physics.render."""
    with _env(cfg, seed=0, render_quality="full") as env:
        ours = env.reset()["image"]
        physics = env._backend._physics
        theirs = physics.render(64, 64, camera_id=0)
        assert np.abs(ours.astype(int) - theirs).max() <= 1


def test_bad_task_id_lists_valid_ones(cfg):
    with pytest.raises(ValueError) as err:
        validate_task_id("dmc:cheetah_fly")
    message = str(err.value)
    assert "unknown task 'dmc:cheetah_fly'" in message
    for task in PAPER_TASKS:
        assert task in message
    with pytest.raises(ValueError, match="unknown task"):
        make_env(cfg.env, cfg.distraction, seed=0, task="mujoco:nothing")
    with pytest.raises(ValueError, match="gym:pusher: no Gymnasium env 'pusher' is registered"):
        make_env(cfg.env, cfg.distraction, seed=0, task="gym:pusher")  # an open set: at make


def test_task_registry_has_the_paper_tasks():
    tasks = list_tasks()
    assert set(PAPER_TASKS) <= set(tasks)
    assert "dmc:ball_in_cup_catch" in tasks and "dmc:point_mass_easy" in tasks


def test_other_suite_task_and_camera(cfg):
    with _env(cfg, "dmc:quadruped_walk") as env:
        assert env._backend.camera == 2
        assert env.reset()["image"].std() > 0
    with pytest.raises(ValueError, match="camera 99 does not exist"):
        _env(cfg, camera=99)


def test_image_size(cfg):
    with _env(cfg, size=32) as env:
        assert env.reset()["image"].shape == (32, 32, 3)
    with pytest.raises(ConfigError, match="env.size"):
        load_config([], ["env.size=8"])
