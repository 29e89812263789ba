"""Published learning curves of reference methods, to draw beside ours at the same env steps.

``diswm/configs/published_scores.json`` holds, per method and DMC-vision task, every published
seed's training-episode returns binned over env steps (rebuilt from the authors' score files by
``scripts/published_scores.py``):

    dreamerv2  danijar/dreamerv2 `scores/dmc-vision-dreamerv2.json`: 5 seeds, 30k bins (as
               published), the `defaults` + `dmc_vision` configuration (our `dreamerv2_repro`)
    dreamerv3  danijar/dreamerv3 `scores/dmc_vision-dreamerv3.json.gz`: 10 seeds, its episodes
               averaged in 10k bins

Each bin is the mean of the episodes that ended in (x - bin, x]. A seed's value at env step s is
read by linear interpolation between bin centres (x - bin/2), held flat before the first centre
and after the last: a bin's mean describes its middle, and our evaluations fall between them.
Before the first centre (15k env steps for DreamerV2) the value is that first bin's mean, which
averages its early near-random episodes with its later ones.

    ref = Published.load()
    ref.at("dreamerv2", "dmc:cheetah_run", 30_000)   # Point(mean, low, high, seeds)
    xs, mean, low, high = ref.band("dreamerv2", "dmc:cheetah_run", upto=60_000)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

METHODS = ("dreamerv2", "dreamerv3")


@dataclass(frozen=True)
class Point:
    """The published seeds at one env step: their mean, min and max, and how many there are."""

    mean: float
    low: float
    high: float
    seeds: int

    def text(self) -> str:
        return f"{self.mean:.0f} [{self.low:.0f}–{self.high:.0f}]"


def task_key(task: str) -> str:
    """Our task id ("dmc:cheetah_run") -> the score files' name ("cheetah_run")."""
    return task.split(":", 1)[1] if task.startswith("dmc:") else task


class Published:
    def __init__(self, data: dict):
        self.data = data

    @classmethod
    @cache
    def load(cls) -> Published:
        text = resources.files("diswm.configs").joinpath("published_scores.json").read_text()
        return cls(json.loads(text))

    def has(self, method: str, task: str) -> bool:
        return task_key(task) in self.data.get(method, {}).get("tasks", {})

    def source(self, method: str) -> str:
        return self.data[method]["source"]

    def seeds(self, method: str, task: str) -> tuple[np.ndarray, np.ndarray]:
        """(bin centres (X,), returns (S, X)) of every published seed; NaN where a bin is empty."""
        if method not in self.data:
            raise KeyError(f"no published scores for method {method!r}; have {', '.join(self.data)}")
        tasks = self.data[method]["tasks"]
        key = task_key(task)
        if key not in tasks:
            raise KeyError(f"no published {method} scores for task {task!r}; have "
                           f"{', '.join(sorted(tasks))}")
        entry = tasks[key]
        centres = np.asarray(entry["xs"], float) - self.data[method]["bin"] / 2
        ys = np.array([[np.nan if y is None else y for y in entry["seeds"][s]]
                       for s in sorted(entry["seeds"], key=int)], float)
        return centres, ys

    def _interp(self, method: str, task: str, steps: np.ndarray) -> np.ndarray:
        centres, ys = self.seeds(method, task)
        out = np.empty((len(ys), len(steps)))
        for i, row in enumerate(ys):
            ok = ~np.isnan(row)
            out[i] = np.interp(steps, centres[ok], row[ok])
        return out

    def at(self, method: str, task: str, env_step: float) -> Point:
        """Every seed's return at `env_step` (interpolated between bin centres)."""
        values = self._interp(method, task, np.asarray([float(env_step)]))[:, 0]
        return Point(float(values.mean()), float(values.min()), float(values.max()), len(values))

    def band(self, method: str, task: str, upto: float, points: int = 60
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(env steps, mean, min, max over seeds) from the first bin's centre to `upto` (at
        least that centre), for plotting: nothing is drawn where no bin's middle lies."""
        first = float(self.seeds(method, task)[0][0])
        xs = np.linspace(first, max(float(upto), first), points)
        values = self._interp(method, task, xs)
        return xs, values.mean(0), values.min(0), values.max(0)


def draw(ax, method: str, task: str, upto: float, color: str = "tab:grey") -> bool:
    """The published seeds' min-max band and mean on `ax` up to `upto` env steps; False when
    there are none for this task."""
    ref = Published.load()
    if not ref.has(method, task):
        return False
    xs, mean, low, high = ref.band(method, task, upto)
    n = ref.at(method, task, upto).seeds
    ax.fill_between(xs, low, high, color=color, alpha=0.18, lw=0,
                    label=f"{method} published: {n} seeds' training episodes (min–max)")
    ax.plot(xs, mean, color=color, lw=1.2, ls="--", label=f"{method} published mean")
    return True
