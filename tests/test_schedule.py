"""The run schedule shared by the serial runner and the distributed learner (learner/schedule.py):
evaluations on a fixed grid, each point once, checked against a plain loop."""

from __future__ import annotations

import numpy as np
import pytest

from diswm.presets import load_config
from learner.schedule import RunSchedule, legacy_schedule


def plain_grid(counts: list[int], every: int, steps: int) -> list[int]:
    """The reference: every multiple of `every` the running count reaches, once, then the end."""
    points, done = [], 0
    for n in counts:
        for k in range(done // every + 1, min(n, steps) // every + 1):
            points.append(k * every)
        done = max(done, min(n, steps) // every * every)
    if not points or points[-1] != steps:
        points.append(steps)
    return points


@pytest.mark.parametrize("jump", [1, 2, 7, 50])
def test_evaluations_land_on_the_grid_once_each(jump):
    cfg = load_config(["tiny"], ["train.steps=1000", "train.eval_every=100"])
    schedule = RunSchedule.from_config(cfg)
    rng = np.random.default_rng(jump)
    counts, n, got = [], 0, []
    while n < 1000:
        n += int(rng.integers(1, jump + 1))
        counts.append(n)
        if (point := schedule.eval_due(n)) is not None:
            got.append(point)
    if (point := schedule.final_eval()) is not None:
        got.append(point)
    assert got == plain_grid(counts, 100, 1000)
    assert len(set(got)) == len(got) and schedule.skipped_evals == 0


def test_a_jump_past_two_points_evaluates_the_latest_and_counts_the_other():
    cfg = load_config(["tiny"], ["train.steps=1000", "train.eval_every=100"])
    schedule = RunSchedule.from_config(cfg)
    assert schedule.eval_due(99) is None
    assert schedule.eval_due(250) == 200 and schedule.skipped_evals == 1
    assert schedule.eval_due(260) is None
    assert schedule.final_eval() == 1000 and schedule.final_eval() is None


def test_the_switch_comes_before_an_evaluation_at_its_step_and_state_resumes():
    cfg = load_config(["tiny"], ["train.steps=1000", "train.eval_every=100",
                                 "distraction.switch_at=0.5"])
    schedule = RunSchedule.from_config(cfg)
    assert not schedule.switch_due(499, "A") and schedule.switch_due(500, "A")
    assert not schedule.switch_due(500, "B")
    schedule.eval_due(500)
    schedule.checkpoint_due(cfg.train.checkpoint_every)
    again = RunSchedule.from_config(cfg, schedule.state())
    assert again.eval_due(599) is None and again.eval_due(600) == 600
    # A checkpoint from before the grid: next eval at 700 means 600 was the last evaluated.
    assert legacy_schedule(cfg, {"next_eval": 700, "next_ckpt": 400})["evaluated"] == 600
