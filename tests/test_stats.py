"""IQM and stratified-bootstrap intervals (ops/stats.py, through rliable) against plain numpy and
scipy computations, and their place in `diswm report`."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from test_experiment import fake_run

from ops.report import report
from ops.stats import interval_estimates, normalise


def plain_stratified_ci(scores: np.ndarray, reps: int, rng: np.random.Generator):
    """Percentile interval of the IQM, resampling runs within each task (column) on its own."""
    runs, tasks = scores.shape
    values = np.empty(reps)
    for k in range(reps):
        pick = rng.integers(0, runs, size=(runs, tasks))
        values[k] = stats.trim_mean(np.take_along_axis(scores, pick, 0).ravel(), 0.25)
    return np.percentile(values, [2.5, 97.5])


def test_iqm_and_its_interval_match_plain_computations():
    rng = np.random.default_rng(1)
    scores = rng.normal(0.5, 0.1, size=(8, 3))
    scores[0, 0] = 10.0  # an outlier the IQM trims and the mean does not
    est = interval_estimates({"m": scores}, reps=4000)["m"]
    assert est["iqm"] == pytest.approx(stats.trim_mean(scores.ravel(), 0.25))
    assert est["mean"] == pytest.approx(scores.mean())
    lo, hi = plain_stratified_ci(scores, 4000, np.random.default_rng(2))
    assert est["iqm_ci"][0] == pytest.approx(lo, abs=0.015)
    assert est["iqm_ci"][1] == pytest.approx(hi, abs=0.015)
    assert est["iqm_ci"][0] < est["iqm"] < est["iqm_ci"][1]
    assert interval_estimates({"m": scores}, reps=4000)["m"] == est  # seeded: the same report
    flat = interval_estimates({"c": np.full((4, 2), 0.3)}, reps=500)["c"]
    assert flat["iqm_ci"] == pytest.approx((0.3, 0.3))
    one = interval_estimates({"one": scores[:1]})["one"]  # one run per task: no interval
    assert one["iqm_ci"] is None and one["runs"] == 1
    assert normalise("dmc:cheetah_run", np.array([500.0]))[0] == 0.5
    assert normalise("mujoco:pusher", np.array([1.0])) is None


def test_report_gives_iqm_per_task_and_across_tasks(tmp_path):
    finals = {("dmc:walker_walk", s): v for s, v in enumerate([100.0, 200.0, 300.0, 900.0])}
    finals |= {("dmc:cheetah_run", s): v for s, v in enumerate([50.0, 60.0, 70.0, 80.0])}
    runs = [fake_run(tmp_path, f"{task[4:]}-{s}", task, "diswm", s, None, [0.0, value])
            for (task, s), value in finals.items()]
    table = report(runs, tmp_path / "report")["table"]
    # 4 seeds: the IQM is the mean of the middle two
    assert "| 375.0 (100.0, 200.0, 300.0, 900.0) | 250.0 [" in table
    assert "| 65.0 (50.0, 60.0, 70.0, 80.0) | 65.0 [" in table
    across = np.stack([np.array([50, 60, 70, 80]) / 1000, np.array([100, 200, 300, 900]) / 1000],
                      axis=1)
    assert "Across tasks" in table
    row = next(line for line in table.splitlines() if line.startswith("| diswm | 2 ("))
    assert f"| {stats.trim_mean(across.ravel(), 0.25):.3f} [" in row
    assert f"| {across.mean():.3f} [" in row
