"""`diswm experiment TRANSFER`: one command per row of the paper's table (`all`: the whole table).

    diswm experiment cheetah_run_to_walker_walk --baselines dreamerv2 --seeds 2 --budget cpu

1. collect (or reuse) distracting videos of the transfer's source task -> ``OUT/data``;
2. pretrain (or reuse) a teacher per beta_2 the methods need -> ``OUT/teacher-beta<b>/`` (and
   DreamerV2's conv model for DV2-finetune -> ``OUT/pretrained-conv/``);
3. train every method x seed on the distributed runtime (`run_job`) -> ``OUT/runs/<method>-seed<k>``
   (the colour scheme switches at the midpoint; a finished run is skipped, an interrupted one
   resumes from its checkpoint and its Redis AOF);
4. ``diswm report`` over all runs -> ``OUT/report/`` (curves, aggregate CSV, markdown table).

Budgets: ``paper`` is the paper's (1M env steps, batch 50x50; for GPU machines); ``cpu`` is the
``cpu`` preset (the `debug` model sizes, 16x32 batches, 50,000 env steps, compiled): about
45 minutes per method x seed on a 2-core CPU, so runs go one after another and the command
resumes where it stopped. `make run` is the shorter ``quickstart`` (8,000 env steps).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from diswm import signals
from diswm.atomic import atomic_write
from diswm.config import Config, ConfigError, replace
from diswm.control import RunFailed
from diswm.presets import load_config, preset_names
from diswm.runfolder import private_dir

METHODS: dict[str, tuple[str, ...]] = {
    "diswm": (), "dreamerv2": ("dreamerv2",), "dv2_finetune": ("dv2_finetune",),
    "no_distill": ("no_distill",), "no_beta": ("no_beta",),
    "dreamerv2_repro": ("dreamerv2_repro",),
}
BUDGETS: dict[str, tuple[str, ...]] = {"paper": (), "cpu": ("cpu",)}
#: `diswm experiment reproduce`: single tasks, no teacher, DreamerV2 as published by default.
REPRODUCE = "reproduce"
REPRO_TASKS = ("dmc:cheetah_run", "dmc:cartpole_swingup")
#: Budgets of a reproduction, applied after the method's preset: `cpu` cuts the sizes to what
#: about 45 minutes on 2 cores train at DreamerV2's batch and train ratio (presets.yaml).
REPRO_BUDGETS: dict[str, tuple[str, ...]] = {"paper": (), "cpu": ("repro_cpu",)}
TRANSFERS = ("cheetah_run_to_walker_walk", "reacher_easy_to_cheetah_run",
             "cheetah_run_to_hopper_stand", "finger_spin_to_reacher_easy",
             "finger_spin_to_cartpole_swingup", "reacher_easy_to_pusher")


def ensure_teacher(cfg: Config, data: Path, folder: Path, progress: Callable[[str], None]
                   ) -> Path:
    """The teacher of `cfg.pretrain` on `data`, collected and trained only if missing."""
    from pretrain.collect import collect
    from pretrain.trainer import CHECKPOINT, PretrainRunner

    teacher = folder / "teacher.pt"
    if teacher.exists():
        progress(f"reusing teacher {teacher}")
        return teacher
    p = cfg.pretrain
    progress(f"collecting {p.frames} frames of {p.source_task} into {data} (resumable)")
    collect(cfg, data, task=p.source_task, frames=p.frames, workers=max(p.workers, 1))
    resume = (folder / CHECKPOINT).exists()
    progress(f"pretraining beta_2={p.beta:g} ({p.updates} updates) in {folder}"
             + (" (resuming)" if resume else ""))
    runner = PretrainRunner(cfg, folder, data=None if resume else data, resume=resume,
                            progress=progress)
    runner.run()
    runner.plot()
    return runner.write_teacher()


def run_experiment(transfer: str, *, methods: Sequence[str] = ("diswm",), seeds: int = 1,
                   budget: str = "cpu", out: str | Path, overrides: Sequence[str] = (),
                   extra_presets: Sequence[str] = (), parallel: int = 1, retries: int = 1,
                   tasks: Sequence[str] = REPRO_TASKS,
                   progress: Callable[[str], None] = print) -> dict[str, Any]:
    """`parallel` > 1 runs up to that many method x seed runs at once on one Ray and one Redis
    (each in its own replay namespace and placement group; runs the cluster cannot fit yet wait
    in Ray's queue); a failed run is retried `retries` times, then reported."""
    from ops.report import report
    from ops.runtime.job import run_job

    if transfer not in ("all", REPRODUCE) and transfer not in TRANSFERS:
        raise ConfigError(f"unknown transfer {transfer!r}; valid: all, {REPRODUCE}, "
                          f"{', '.join(TRANSFERS)}")
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget {budget!r}; valid: {', '.join(BUDGETS)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method {unknown[0]!r}; valid: {', '.join(METHODS)}")
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    assert set(TRANSFERS) <= set(preset_names())
    out = Path(out).resolve()
    if transfer == REPRODUCE:
        runs, todo = plan_reproduction(tasks, methods=methods, seeds=seeds, budget=budget,
                                       out=out, overrides=overrides,
                                       extra_presets=extra_presets)
    else:
        runs, todo = plan_runs(transfer, methods=methods, seeds=seeds, budget=budget, out=out,
                               overrides=overrides, extra_presets=extra_presets,
                               progress=progress)
    failed: dict[str, str] = {}
    if parallel > 1 and len(todo) > 1:
        failed = _run_concurrently(todo, runs, out, parallel, retries, progress)
    else:
        for run_dir, cfg, teacher, title, _ in todo:
            progress(f"=== {title} -> {run_dir}")
            run_job(cfg, run_dir, teacher=str(teacher) if teacher else None,
                    skip_pretrain=True, progress=progress)
            report([r for r in runs if (r / "summary.json").exists()],
                   out / "report")  # the report grows as runs finish
    done = [r for r in runs if (r / "summary.json").exists()]
    summary = report(done, out / "report") if done else {"table": "", "plots": [], "runs": 0}
    if failed:
        raise RunFailed(f"{len(failed)} run(s) failed: " + "; ".join(
            f"{name}: {err}" for name, err in failed.items()) + f" (report of the others in "
            f"{out / 'report'})")
    progress(f"report: {out / 'report' / 'results.md'}\n{summary['table']}")
    return summary


def plan_runs(transfer: str, *, methods: Sequence[str], seeds: int, budget: str, out: Path,
              overrides: Sequence[str] = (), extra_presets: Sequence[str] = (),
              progress: Callable[[str], None] = print) -> tuple[list[Path], list[tuple]]:
    """Every run folder of the experiment, and the runs still to do as (run folder, config,
    teacher, title, namespace); collects and pretrains the teachers the methods need."""
    # `all`: every transfer of the paper's table, each in OUT/<transfer>/, one report over all.
    transfers = TRANSFERS if transfer == "all" else (transfer,)
    runs, todo = [], []
    for name in transfers:
        folder = out / name if transfer == "all" else out
        plans = []
        for method in methods:
            presets = [*BUDGETS[budget], *extra_presets, name, *METHODS[method]]
            cfg = load_config(presets, overrides)
            teacher = None
            if cfg.distill.enabled or cfg.distill.finetune:
                # DisWM's teachers are beta-VAE video models (one per beta_2); DV2-finetune
                # pretrains DreamerV2's own conv architecture on the same videos.
                kind = (f"teacher-beta{cfg.pretrain.beta:g}" if cfg.model.encoder == "beta_vae"
                        else f"pretrained-{cfg.model.encoder}")
                teacher = ensure_teacher(cfg, folder / "data", folder / kind, progress)
            plans.append((method, presets, cfg, teacher))
        for seed in range(seeds):  # seed-major: every method's seed 0 comes first
            for method, presets, cfg, teacher in plans:
                run_dir = folder / "runs" / f"{method}-seed{seed}"
                runs.append(run_dir)
                if (run_dir / "summary.json").exists():
                    progress(f"{run_dir.name}: done already, skipped")
                    continue
                private_dir(run_dir)
                atomic_write(run_dir / "experiment.json", json.dumps(
                    {"transfer": name, "method": method, "seed": seed, "budget": budget,
                     "presets": presets, "overrides": list(overrides)}, indent=2) + "\n")
                todo.append((run_dir, replace(cfg, train={"seed": seed}), teacher,
                             f"{name}: {method}, seed {seed}", f"{name}-{method}-seed{seed}"))
    return runs, todo


def plan_reproduction(tasks: Sequence[str], *, methods: Sequence[str], seeds: int, budget: str,
                      out: Path, overrides: Sequence[str] = (),
                      extra_presets: Sequence[str] = ()) -> tuple[list[Path], list[tuple]]:
    """`diswm experiment reproduce`: every (task, method, seed) run on a plain task, no teacher
    (``OUT/runs/<task>-<method>-seed<k>``), as (run folders, runs still to do)."""
    if not tasks:
        raise ConfigError("reproduce: --tasks needs at least one task")
    runs, todo = [], []
    plans = []
    for task in tasks:
        for method in methods:
            presets = [*METHODS[method], *REPRO_BUDGETS[budget], *extra_presets]
            cfg = load_config(presets, [f"env.task={task}", *overrides])
            if cfg.distill.enabled or cfg.distill.finetune:
                raise ConfigError(f"reproduce: method {method!r} needs a teacher (a source task's "
                                  "videos); a reproduction trains on one task from scratch "
                                  "(methods: dreamerv2_repro, dreamerv2)")
            plans.append((task, method, presets, cfg))
    for seed in range(seeds):  # seed-major: every task's and method's seed 0 comes first
        for task, method, presets, cfg in plans:
            name = f"{task.split(':', 1)[-1]}-{method}-seed{seed}"
            run_dir = out / "runs" / name
            runs.append(run_dir)
            if (run_dir / "summary.json").exists():
                continue
            private_dir(run_dir)
            atomic_write(run_dir / "experiment.json", json.dumps(
                {"transfer": None, "task": task, "method": method, "seed": seed,
                 "budget": budget, "presets": presets,
                 "overrides": [f"env.task={task}", *overrides]}, indent=2) + "\n")
            todo.append((run_dir, replace(cfg, train={"seed": seed}), None,
                         f"{task}: {method}, seed {seed}", f"{REPRODUCE}-{name}"))
    return runs, todo


def _run_concurrently(todo, runs, out: Path, parallel: int, retries: int,
                      progress: Callable[[str], None]) -> dict[str, str]:
    """Run `todo` on one local Ray and one supervised Redis, `parallel` at a time: each run in
    its own namespace (``<transfer>-<method>-seed<k>``) and placement group (learner, evaluator, actors),
    which Ray grants when the cluster has room. Returns {run: error} of the runs that failed."""
    import queue
    import threading

    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from ops.report import report
    from ops.runtime.job import run_job
    from ops.runtime.ray_head import cluster_gpus, run_bundles
    from replay_service.server import RedisServer

    sharded = sorted({cfg.replay.shards for _, cfg, _, _, _ in todo} - {1})
    if sharded:
        raise ValueError(f"replay.shards={sharded[0]}: concurrent runs share one local Redis; "
                         "run them with replay.shards=1 (or one at a time: --parallel 1)")
    first_cfg = todo[0][1]
    redis = RedisServer(out / "redis", persistence=first_cfg.replay.persistence,
                        fsync=first_cfg.replay.fsync, supervise=True,
                        follow_parent=True).start()
    password_file = out / "redis" / "redis.password"
    lock, failed = threading.Lock(), {}
    jobs: queue.Queue = queue.Queue()
    for item in todo:
        jobs.put(item)
    import os

    per_run = max(sum(b.get("CPU", 0.0) for b in run_bundles(cfg, False))
                  for _, cfg, _, _, _ in todo)
    started = ray.is_initialized()
    if not started:  # room for `parallel` runs (oversubscribed on purpose, as ray_cpus does)
        signals.ray_init(address="local", include_dashboard=False, log_to_driver=False,
                         num_cpus=max(os.cpu_count() or 1, int(per_run * min(parallel, len(todo)))),
                         namespace=f"experiment-{out.name}")
    if per_run > ray.cluster_resources().get("CPU", 0.0):
        if not started:
            ray.shutdown()
        redis.stop()
        raise ValueError(f"one run needs {per_run:g} CPUs (learner, evaluator, actors) and the "
                         f"Ray cluster has {ray.cluster_resources().get('CPU', 0.0):g}")
    progress(f"running {len(todo)} runs, up to {parallel} at once, on Ray "
             f"({ray.cluster_resources().get('CPU', 0):g} CPUs) and redis "
             f"127.0.0.1:{redis.port}")

    def worker() -> None:
        while True:
            try:
                run_dir, cfg, teacher, title, name = jobs.get_nowait()
            except queue.Empty:
                return
            cfg = replace(cfg, replay={"port": redis.port, "password_file": str(password_file),
                                       "namespace": name})

            def say(msg: str, name: str = name) -> None:
                progress(f"[{name}] {msg}")

            for attempt in range(retries + 1):
                pg = placement_group(run_bundles(cfg, cluster_gpus() > 0), strategy="PACK")
                try:
                    say(f"=== {title}: waiting for room in the cluster"
                        + (f" (attempt {attempt + 1})" if attempt else ""))
                    ray.get(pg.ready())
                    signals.check()  # stopping: start no run
                    run_job(cfg, run_dir, teacher=str(teacher) if teacher else None,
                            skip_pretrain=True, progress=say, placement_group=pg)
                    with lock:
                        failed.pop(name, None)
                        report([r for r in runs if (r / "summary.json").exists()],
                               out / "report")  # the report grows as runs finish
                    break
                except KeyboardInterrupt:  # signals.request_stop(): run_job stopped its run
                    say("stopped")
                    return
                except Exception as err:  # noqa: BLE001 - reported, retried, never silent
                    message = " ".join(f"{type(err).__name__}: {err}".split())[:300]
                    with lock:
                        failed[name] = message
                    say(f"failed: {message}"
                        + ("; retrying" if attempt < retries else "; giving up"))
                finally:
                    remove_placement_group(pg)

    # Each thread sets its event when it ends. Not Thread.join: in CPython 3.11 a join that a
    # signal interrupts (Ctrl-C, SIGTERM) marks the still-running thread as stopped, and every
    # later join then returns at once (threading.py, the bpo-45274 branch).
    ended = [threading.Event() for _ in range(min(parallel, len(todo)))]

    def run_worker(event: threading.Event) -> None:
        try:
            worker()
        finally:
            event.set()

    threads = [threading.Thread(target=run_worker, args=(event,), name=f"experiment-{i}",
                                daemon=True) for i, event in enumerate(ended)]
    try:
        for t in threads:
            t.start()
        for event in ended:
            event.wait()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: each run stops as `diswm run` would
        progress("stopping: each run stops its actors and checkpoints its learner")
        signals.request_stop()
        for event in ended:
            event.wait(timeout=600)
        raise
    finally:
        if not started:
            ray.shutdown()
        redis.stop()
    return failed
