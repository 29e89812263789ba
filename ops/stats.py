"""The statistics reviewers expect of few-seed RL results: the interquartile mean (IQM) with 95%
stratified-bootstrap confidence intervals, across seeds and tasks (Agarwal et al. 2021, "Deep RL
at the edge of the statistical precipice"), computed by their `rliable` package.

    est = interval_estimates({"diswm": scores, "dreamerv2": scores})   # (runs, tasks) arrays
    est["diswm"]["iqm"], est["diswm"]["iqm_ci"]                        # value, (lo, hi)

Scores across tasks are normalised first (`normalise`): a DMC task's return divided by 1000, its
maximum. The bootstrap resamples runs within each task (stratified), with a fixed seed, so a
report is the same every time it is made from the same runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np

#: Bootstrap resamples (rliable's default is 50,000; the intervals move in the third digit).
REPS = 10_000
SEED = 0


def normalise(task: str, returns: np.ndarray) -> np.ndarray | None:
    """Returns on a common scale across tasks: DMC's maximum return is 1000 (every dm_control
    task's reward is in [0, 1] per step over 1000 steps); None for a task without one."""
    if task.startswith("dmc:"):
        return np.asarray(returns, float) / 1000.0
    return None


def interval_estimates(scores: Mapping[str, np.ndarray], reps: int = REPS,
                       seed: int = SEED) -> dict[str, dict[str, object]]:
    """Per method: IQM and mean of its (runs, tasks) score matrix, each with its 95% stratified
    bootstrap interval, and the run count. A method with one run per task has no interval."""
    from rliable import library as rly
    from rliable import metrics

    def both(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x)])

    out: dict[str, dict[str, object]] = {}
    many = {m: np.asarray(s, float) for m, s in scores.items() if np.asarray(s).shape[0] > 1}
    if many:
        # rliable 1.2's stratified resampling draws from NumPy's global generator whatever
        # random_state says: seed that for the call, and put the caller's state back.
        saved = np.random.get_state()
        np.random.seed(seed)
        try:
            with warnings.catch_warnings():  # arch's notice that RandomState will be replaced
                warnings.simplefilter("ignore", FutureWarning)
                points, intervals = rly.get_interval_estimates(
                    many, both, reps=reps, random_state=np.random.RandomState(seed))
        finally:
            np.random.set_state(saved)
    for method, s in scores.items():
        s = np.asarray(s, float)
        if method in many:
            (iqm, mean), ci = points[method], intervals[method]
            out[method] = {"iqm": float(iqm), "mean": float(mean), "runs": s.shape[0],
                           "iqm_ci": (float(ci[0, 0]), float(ci[1, 0])),
                           "mean_ci": (float(ci[0, 1]), float(ci[1, 1]))}
        else:
            out[method] = {"iqm": float(metrics.aggregate_iqm(s)), "mean": float(np.mean(s)),
                           "runs": s.shape[0], "iqm_ci": None, "mean_ci": None}
    return out


def text(est: Mapping[str, object], key: str = "iqm", digits: int = 1,
         scale: float = 1.0) -> str:
    """"152.3 [120.1–180.4]" (no interval from one run per task)."""
    value, ci = float(est[key]) * scale, est[f"{key}_ci"]
    if ci is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{ci[0] * scale:.{digits}f}–{ci[1] * scale:.{digits}f}]"
