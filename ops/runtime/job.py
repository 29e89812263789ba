"""The main job (`make run`, `diswm run`): pretraining, then distributed online training.

    summary = run_job(cfg, run_dir)

1. a local redis-server (loopback, password) and a local Ray;
2. stage 1: collect distracting videos of `pretrain.source_task` with Ray workers and train the
   action-free beta-VAE video model -> the frozen teacher (skipped with a given teacher, or when
   distillation and fine-tuning are off);
3. stages 2-3: a learner actor and `runtime.actors` env actors train DisWM online until
   `train.steps` env steps, switching every env's colours at `distraction.switch_at`;
4. everything stops cleanly (actors flush partial episodes, the learner checkpoints) and the run
   folder holds the resolved config, checkpoints, CSVs, curves and ``summary.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diswm import signals
from diswm.atomic import atomic_write
from diswm.config import Config, replace
from diswm.control import RunControl, RunFailed
from diswm.runfolder import private_dir
from diswm.supervision import one_line
from ops.runtime.cluster import Cluster, action_dim_of
from replay_service.redis_cluster import unfed_shards_note


def _pretrain(cfg: Config, run_dir: Path, progress: Callable[[str], None]) -> tuple[Path, dict]:
    from pretrain.collect import collect
    from pretrain.trainer import PretrainRunner

    data = run_dir / "pretrain" / "data"
    p = cfg.pretrain
    progress(f"[1/3] collecting {p.frames} distracting frames of {p.source_task} "
             f"(scheme {cfg.distraction.scheme}, {max(p.workers, 1)} Ray workers)")
    info = collect(cfg, data, task=p.source_task, frames=p.frames, workers=max(p.workers, 1),
                   progress=lambda entry, manifest: progress(
                       f"      shard {entry['index']}: {manifest['frames']}/{p.frames} frames"))
    progress(f"      {info['frames']} frames in {info['seconds']:.0f}s "
             f"({info['frames_per_second']:.0f} frames/s)")
    progress(f"[2/3] pretraining the video model: {p.updates} updates of "
             f"{p.batch_size}x{p.batch_length}")
    start = time.perf_counter()
    runner = PretrainRunner(cfg, run_dir / "pretrain" / "model", data=data, progress=progress)
    runner.run()
    teacher = runner.write_teacher()
    runner.plot()
    seconds = time.perf_counter() - start
    progress(f"      teacher checkpoint {teacher} ({seconds:.0f}s)")
    return teacher, {"collect": info, "train_seconds": seconds, "teacher": str(teacher)}


def run_job(cfg: Config, run_dir: str | Path, *, teacher: str | None = None,
            skip_pretrain: bool = False, progress: Callable[[str], None] = print,
            poll: float = 2.0, placement_group=None) -> dict[str, Any]:
    """The main job. With `placement_group` (experiment --parallel) the run joins the Ray and
    Redis its caller started (cfg.replay.port) inside that reserved room, and leaves both up."""
    run_dir = Path(run_dir).resolve()
    private_dir(run_dir)
    started = time.perf_counter()
    summary: dict[str, Any] = {"run_dir": str(run_dir), "stages": {}}
    needs_teacher = cfg.distill.enabled or cfg.distill.finetune
    if teacher:
        cfg = replace(cfg, distill={"teacher": str(Path(teacher).resolve())})
    cfg.save(run_dir / "config.yaml")
    from learner.evaluator import ensure_random_reference

    random_ref = ensure_random_reference(cfg, run_dir, progress=progress)
    cluster = Cluster.create(cfg, run_dir, placement_group=placement_group)
    progress(f"run folder: {run_dir}")
    where = (cfg.replay.password_file or "$DISWM_REDIS_PASSWORD") if cfg.replay.port else (
        run_dir / "redis" / "redis.password")
    progress(f"replay: redis on {cluster.spec.host}:{cluster.spec.port}, namespace "
             f"{cluster.namespace} (password in {where}), Ray "
             f"{'shared' if placement_group is not None else 'local'}")
    try:
        if needs_teacher and not cfg.distill.teacher and not skip_pretrain:
            path, info = _pretrain(cfg, run_dir, progress)
            summary["stages"]["pretrain"] = info
            cfg = replace(cfg, distill={"teacher": str(path)})
            cfg.save(run_dir / "config.yaml")
            cluster.cfg = cfg
            cluster.save_state()
        online_start = time.perf_counter()
        progress(f"[3/3] online training on {cfg.env.task}: {cfg.runtime.actors} actors x "
                 f"{cfg.runtime.envs_per_actor} envs, {cfg.train.steps} env steps, teacher: "
                 f"{cfg.distill.teacher or 'none'}")
        learner = cluster.start_learner(action_dim_of(cfg))
        cluster.scale(cfg.runtime.actors)
        if note := unfed_shards_note(range(cfg.runtime.actors), cluster.spec.shards):
            progress("      " + note)
        _print_metrics_urls(cluster, progress)
        seen, reported, refreshed = 0, {}, time.monotonic()
        import ray

        control = RunControl(cluster.redis_client(), cluster.namespace)
        while True:
            signals.check()  # a SIGTERM that Ray swallowed during the roles' start
            lines = ray.get(learner.progress_lines.remote(seen))
            seen += len(lines)
            for line in lines:
                progress("      " + line)
            for role, message in control.errors().items():  # crashes surface as they happen
                if reported.get(role) != message:
                    reported[role] = message
                    progress(f"      {role}: {message}")
            if ray.get(learner.done.remote()):
                break
            if cluster.storage is not None and time.monotonic() - refreshed > 10:
                cluster.refresh_targets()  # the learner's own copy is in its node's scratch
                refreshed = time.monotonic()
            time.sleep(poll)  # a progress poll, not synchronisation: done() decides
        stats = ray.get(learner.stats.remote())
        if stats["error"]:
            raise RunFailed(f"the learner failed: {one_line(stats['error'])} (run folder "
                            f"{run_dir}; Ray's logs hold the traceback)")
        summary["stages"]["online_seconds"] = time.perf_counter() - online_start
    finally:
        final = cluster.shutdown()
    summary.update({"config": str(run_dir / "config.yaml"), "online": final,
                    "wall_seconds": time.perf_counter() - started})
    if final:
        counters = final["counters"]
        summary["env_steps_per_second"] = counters["env_steps"] / max(
            summary["stages"].get("online_seconds", 1.0), 1e-9)
        summary["final_return"] = final["final_return"]
    summary["random_return"] = random_ref["return_mean"]
    atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    final_return, rand = summary.get("final_return"), random_ref["return_mean"]
    versus = (f" vs {rand:.1f} for a random policy ({final_return / rand:.1f}x)"
              if final_return is not None and rand > 0 else f" vs {rand:.1f} for a random policy")
    training = training_note(run_dir, cfg.train.eval_every)
    progress(f"done in {summary['wall_seconds'] / 60:.1f} min: final eval return "
             f"{final_return if final_return is None else round(final_return, 1)}{versus}"
             f"{training}"
             f"{published_note(cfg.env.task, (final or {}).get('counters', {}).get('env_steps'))}"
             f"; see {run_dir / 'summary.json'} and {run_dir / 'curve.png'}")
    return summary


def _print_metrics_urls(cluster: Cluster, progress: Callable[[str], None]) -> None:
    from diswm import telemetry

    for name, address in sorted(telemetry.targets(cluster.redis_client(), cluster.namespace).items()):
        progress(f"      metrics: http://{address}/metrics  ({name})")
    progress(f"      Prometheus: make monitor RUN={cluster.run_dir}  (targets in "
             f"{cluster.run_dir / 'prometheus' / 'targets.json'})")


def training_note(run_dir: Path, window: int) -> str:
    """", training episodes of the last `window` env steps: mean (n)" from the run's
    episodes.csv (the exploring policy, which is what the published scores count)."""
    from diswm.runfolder import read_episodes
    from ops.report import training_windows

    episodes = [(int(r["env_steps"]), float(r["return"])) for r in read_episodes(run_dir)]
    if not episodes:
        return ""
    last = training_windows(episodes, [max(s for s, _ in episodes)], window)[0]
    return (f", training episodes of the last {window} env steps {last['return']:.1f} "
            f"({last['episodes']})")


def published_note(task: str, env_steps: int | None) -> str:
    """", DreamerV2 published at N env steps: mean [min-max] over its seeds (clean DMC,
    training episodes)" where its score file has the task, else empty."""
    from diswm.published import Published

    ref = Published.load()
    if not env_steps or not ref.has("dreamerv2", task):
        return ""
    point = ref.at("dreamerv2", task, env_steps)
    return (f", DreamerV2 published at {env_steps} env steps {point.text()} ({point.seeds} "
            "seeds, clean DMC, training episodes)")
