"""`diswm report RUNS...`: aggregate evaluation CSVs over seeds, plot, and tabulate vs the paper.

Each run folder holds ``config.yaml`` and ``eval.csv`` (env_steps, return_mean, ...) and, when an
experiment made it, ``experiment.json`` ({"transfer", "method", "seed"}). Runs are grouped by
(task, method); evaluations are aligned on their grid point (``eval_step``: k x
``train.eval_every`` or the run's last step, learner/schedule.py). Runs written before the grid
have no ``eval_step``: their env steps are rounded to the nearest multiple of ``eval_every``,
and two evaluations that land on one point are an error that names both (never one dropped).
Each point is the mean over seeds with every seed drawn; the 95% Student-t band only from 5
seeds up.
Reference points from the paper (``diswm/configs/anchor_scores.yaml``) are drawn beside them,
and a reference method's published seeds on the same task (``diswm/published.py``: DreamerV2's
by default) as a min-max band with their mean at the same env steps; the table's "published at
this budget" column gives those seeds at each row's final env step. Those are training
episodes (the exploring policy), so a run's own training episodes (``episodes.csv``) are drawn
dashed beside its evaluations, as the mean of the episodes that ended in each evaluation's
window, and tabulated for the last window.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from diswm.published import METHODS as PUBLISHED_METHODS
from diswm.published import Published
from diswm.published import draw as draw_published
from diswm.runfolder import read_episodes
from ops.stats import interval_estimates, normalise
from ops.stats import text as stat_text


def anchor_scores() -> dict[str, Any]:
    text = resources.files("diswm.configs").joinpath("anchor_scores.yaml").read_text()
    return yaml.safe_load(text)


def t_interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% Student-t interval); half-width 0 for a single value."""
    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return mean, 0.0
    from scipy import stats

    sem = float(np.std(values, ddof=1)) / math.sqrt(n)
    return mean, float(stats.t.ppf(0.975, n - 1)) * sem


def load_run(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    meta_path = run_dir / "experiment.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    eval_path = run_dir / "eval.csv"
    if not eval_path.exists():
        raise FileNotFoundError(f"{run_dir}: no eval.csv (did the run evaluate?)")
    with eval_path.open() as f:
        rows = [{"env_steps": int(r["env_steps"]), "return": float(r["return_mean"]),
                 "eval_step": int(r["eval_step"]) if r.get("eval_step") else None}
                for r in csv.DictReader(f)]
    every = int(cfg["train"]["eval_every"])
    seen: dict[int, int] = {}
    for row in rows:  # the point each evaluation is plotted at; two on one point is an error
        point = (row["eval_step"] if row["eval_step"] is not None
                 else int(round(row["env_steps"] / every)) * every)
        if point in seen:
            raise ValueError(
                f"{eval_path}: the evaluations at env steps {seen[point]} and "
                f"{row['env_steps']} both fall on point {point} (eval_every {every}); "
                "neither is dropped: re-evaluate one of them or report the runs apart")
        seen[point] = row["env_steps"]
        row["point"] = point
    training = [(int(r["env_steps"]), float(r["return"])) for r in read_episodes(run_dir)]
    random_path = run_dir / "random.json"
    dist = cfg.get("distraction", {})
    switch = (float(dist["switch_at"]) * int(cfg["train"]["steps"])
              if dist.get("enabled") and float(dist.get("switch_at", 1.0)) < 1.0 else None)
    return {"dir": str(run_dir), "task": cfg["env"]["task"],
            "method": meta.get("method", "run"), "seed": meta.get("seed", cfg["train"]["seed"]),
            "transfer": meta.get("transfer"), "eval_every": every, "rows": rows,
            "training": training_windows(training, [r["point"] for r in rows], every),
            "random": (json.loads(random_path.read_text())["return_mean"]
                       if random_path.exists() else None), "switch": switch}


def training_windows(episodes: list[tuple[int, float]], points: list[int],
                     every: int) -> list[dict[str, float]]:
    """The mean return of the training episodes that ended in each evaluation's window (the
    previous point, this point]: the exploring policy's returns, which DreamerV2's published
    scores are, on the evaluations' grid. The last window also takes the episodes that ended
    after its point (the actors' last steps); windows without an episode are left out."""
    out = []
    for i, point in enumerate(points):
        lo = points[i - 1] if i else point - every
        hi = point if i < len(points) - 1 else math.inf
        rets = [r for s, r in episodes if lo < s <= hi]
        if rets:
            out.append({"point": point, "return": float(np.mean(rets)), "episodes": len(rets)})
    return out


def aggregate(runs: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, float]]]:
    """(task, method) -> [{env_steps, mean, ci, n}] over seeds, on the eval schedule."""
    grouped: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for row in run["rows"]:  # load_run guarantees one evaluation per point
            grouped[(run["task"], run["method"])][row["point"]].append(row["return"])
    out = {}
    for key, steps in grouped.items():
        points = []
        for step in sorted(steps):
            mean, ci = t_interval(steps[step])
            points.append({"env_steps": step, "mean": mean, "ci": ci, "n": len(steps[step])})
        out[key] = points
    return out


def _reference(transfer: str | None) -> dict[str, dict[str, float]]:
    if not transfer:
        return {}
    return anchor_scores().get("transfers", {}).get(transfer, {})


def plot(agg, runs, out: Path, published: tuple[str, ...] = ("dreamerv2",)) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    transfers = {r["task"]: r["transfer"] for r in runs}
    paths = []
    for task in sorted({t for t, _ in agg}):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for (t, method), points in sorted(agg.items()):
            if t != task:
                continue
            xs = np.array([p["env_steps"] for p in points])
            ys = np.array([p["mean"] for p in points])
            n = max(p["n"] for p in points)
            line, = ax.plot(xs, ys, marker="o", lw=2, label=f"{method} (mean of {n})")
            seeds = [r for r in runs if r["task"] == task and r["method"] == method]
            dashed = False
            for run in seeds:  # every seed visible
                ax.plot([r["point"] if r["eval_step"] is not None else r["env_steps"]
                         for r in run["rows"]], [r["return"] for r in run["rows"]],
                        lw=0.8, alpha=0.6, color=line.get_color())
                if run["training"]:  # its training episodes, as the published scores count
                    ax.plot([w["point"] for w in run["training"]],
                            [w["return"] for w in run["training"]], lw=1.2, ls="--",
                            alpha=0.8, color=line.get_color(),
                            label=None if dashed else f"{method}: training episodes (per seed)")
                    dashed = True
            if n >= 5:  # a t-band only where it means something; with few seeds the lines speak
                ci = np.array([p["ci"] for p in points])
                ax.fill_between(xs, ys - ci, ys + ci, alpha=0.15, color=line.get_color())
        ours = max((p["env_steps"] for (t, _), pts in agg.items() if t == task for p in pts),
                   default=0)
        for i, method in enumerate(published):  # the reference's seeds over our env steps
            draw_published(ax, method, task, max(ours, 1), color=("tab:grey", "tab:olive")[i % 2])
        randoms = [r["random"] for r in runs if r["task"] == task and r["random"] is not None]
        if randoms:
            ax.axhline(float(np.mean(randoms)), color="black", ls=":", lw=1,
                       label=f"random policy ({np.mean(randoms):.0f})")
        switches = {r["switch"] for r in runs if r["task"] == task and r["switch"]}
        for sw in sorted(switches):
            ax.axvline(sw, color="grey", ls="--", lw=1)
            ax.text(sw, ax.get_ylim()[1], " scheme A -> B", fontsize=7, va="top", color="grey")
        notes = []
        for method, marks in _reference(transfers.get(task)).items():
            steps = sorted(marks)
            if steps[0] <= 2 * max(ours, 1):  # on the same scale as our curves: draw them
                ax.scatter(steps, [marks[s] for s in steps], marker="*", s=80,
                           label=f"paper {method}")
            else:  # far beyond this budget: state them rather than squash our curves
                notes.append(f"paper {method}: " + ", ".join(
                    f"{marks[s]:g} at {s / 1e6:g}M" for s in steps))
        ax.set_xlabel("env steps")
        ax.set_ylabel("episode return (solid: eval; dashed: training)")
        ax.set_title(f"{transfers.get(task) or task}")
        # The paper's points beyond this budget go in the legend's title, so the legend, placed
        # where it hides the least, never covers them (a separate text box once did).
        ax.legend(fontsize=8, title="\n".join(notes) or None, title_fontsize=7)
        fig.tight_layout()
        path = out / f"{task.replace(':', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def published_text(task: str, env_steps: int, published: tuple[str, ...]) -> str:
    """"dreamerv2 181 [118–260]" for each reference with scores on `task` ("–" if none)."""
    ref = Published.load()
    parts = [f"{m} {ref.at(m, task, env_steps).text()}" for m in published if ref.has(m, task)]
    return "; ".join(parts) or "–"


def table(agg, runs, published: tuple[str, ...] = ("dreamerv2",)) -> str:
    transfers = {r["task"]: r["transfer"] for r in runs}
    lines = ["| task | method | seeds | env steps | final return: mean (per seed) "
             "| final return: IQM [95% CI] | best mean "
             "| training episodes, last window: mean (per seed) | random policy "
             "| published at this budget: mean [min–max] | paper at 0.5M / 1M |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    finals_of = final_scores(runs)
    per_task = {key: interval_estimates({"x": np.asarray(v)[:, None]})["x"]
                for key, v in finals_of.items()}
    for (task, method), points in sorted(agg.items()):
        last = points[-1]
        ref = _reference(transfers.get(task)).get(method, {})
        paper = " / ".join(f"{ref[s]:g}" for s in sorted(ref)) if ref else "–"
        seeds = sorted((r for r in runs if r["task"] == task and r["method"] == method),
                       key=lambda r: r["seed"])
        finals = ", ".join(f"{r['rows'][-1]['return']:.1f}" for r in seeds if r["rows"])
        randoms = [r["random"] for r in seeds if r["random"] is not None]
        rand = f"{np.mean(randoms):.1f}" if randoms else "–"
        best = max(points, key=lambda p: p["mean"])
        last_train = [r["training"][-1]["return"] for r in seeds
                      if r["training"] and r["training"][-1]["point"] == r["rows"][-1]["point"]]
        train = (f"{np.mean(last_train):.1f} ({', '.join(f'{x:.1f}' for x in last_train)})"
                 if last_train else "–")
        lines.append(f"| {transfers.get(task) or task} | {method} | {last['n']} | "
                     f"{last['env_steps']} | {last['mean']:.1f} ({finals}) | "
                     f"{stat_text(per_task[(task, method)]) if (task, method) in per_task else '–'} | "
                     f"{best['mean']:.1f} at {best['env_steps']} | {train} | {rand} | "
                     f"{published_text(task, last['env_steps'], published)} | {paper} |")
    return "\n".join(lines) + "\n" + across_tasks(runs)


def final_scores(runs) -> dict[tuple[str, str], list[float]]:
    """(task, method) -> the final evaluation return of each seed, in seed order."""
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in sorted(runs, key=lambda r: (r["task"], r["method"], r["seed"])):
        if r["rows"]:
            out[(r["task"], r["method"])].append(r["rows"][-1]["return"])
    return dict(out)


def across_tasks(runs) -> str:
    """The methods over every DMC task they ran, normalised (return / 1000): IQM and mean of
    the final returns with 95% stratified-bootstrap intervals (rliable), on the seeds every
    task of the method has. Empty when no method ran two tasks."""
    finals = final_scores(runs)
    scores: dict[str, np.ndarray] = {}
    tasks_of: dict[str, list[str]] = {}
    for method in sorted({m for _, m in finals}):
        tasks = sorted(t for t, m in finals if m == method and normalise(t, np.zeros(1)) is not None)
        if len(tasks) < 2:
            continue
        n = min(len(finals[(t, method)]) for t in tasks)
        scores[method] = np.stack([normalise(t, np.asarray(finals[(t, method)][:n]))
                                   for t in tasks], axis=1)
        tasks_of[method] = tasks
    if not scores:
        return ""
    est = interval_estimates(scores)
    lines = ["", "Across tasks (final evaluation return / 1000, DMC tasks; IQM and mean with 95% "
             "stratified-bootstrap intervals, rliable):", "",
             "| method | tasks | runs per task | IQM [95% CI] | mean [95% CI] |",
             "|---|---|---|---|---|"]
    for method, e in est.items():
        lines.append(f"| {method} | {len(tasks_of[method])} ({', '.join(tasks_of[method])}) | "
                     f"{e['runs']} | {stat_text(e, 'iqm', 3)} | {stat_text(e, 'mean', 3)} |")
    return "\n".join(lines) + "\n"


def report(run_dirs: list[str | Path], out: str | Path,
           published: tuple[str, ...] = ("dreamerv2",)) -> dict[str, Any]:
    """`published`: reference methods whose published seeds are drawn and tabulated (names in
    `diswm.published.METHODS`; empty for none)."""
    if not run_dirs:
        raise ValueError("no run folders given")
    runs = [load_run(d) for d in run_dirs]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    agg = aggregate(runs)
    unknown = [m for m in published if m not in PUBLISHED_METHODS]
    if unknown:
        raise ValueError(f"no published scores for {unknown[0]!r}; choose from "
                         f"{', '.join(PUBLISHED_METHODS)}")
    published = tuple(published)
    plots = plot(agg, runs, out, published)
    text = table(agg, runs, published)
    (out / "results.md").write_text(text)
    with (out / "aggregate.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "method", "env_steps", "mean", "ci95", "n"])
        for (task, method), points in sorted(agg.items()):
            for p in points:
                writer.writerow([task, method, p["env_steps"], f"{p['mean']:.4f}",
                                 f"{p['ci']:.4f}", p["n"]])
    return {"runs": len(runs), "plots": [str(p) for p in plots], "table": text,
            "aggregate": {f"{t}|{m}": pts for (t, m), pts in agg.items()}}
