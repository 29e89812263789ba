"""CLI commands of the distributed runtime: `diswm run`, `diswm cluster ...`, `diswm monitor`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from diswm.runfolder import private_dir

DEFAULT_CLUSTER_DIR = "runs/cluster"


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _stamp_dir(cfg, run_dir: str | None) -> Path:
    if run_dir:
        return Path(run_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(cfg.runtime.run_dir) / f"{stamp}-{cfg.env.task.replace(':', '_')}"


def cmd_run(args: argparse.Namespace, cfg) -> int:
    from ops.runtime.job import run_job

    run_job(cfg, _stamp_dir(cfg, args.run_dir), teacher=args.teacher,
            skip_pretrain=args.skip_pretrain, progress=_err)
    return 0


def cmd_cluster_up(args: argparse.Namespace, cfg) -> int:
    from diswm import signals
    from diswm.config import replace
    from ops.runtime.cluster import STATE_FILE, Cluster, action_dim_of

    run_dir = Path(args.run_dir)
    if (run_dir / STATE_FILE).exists() and not args.force:
        raise ValueError(f"{run_dir} already holds a cluster; `make cluster-down` first, "
                         "or pass another RUN folder")
    if args.actors is not None:
        cfg = replace(cfg, runtime={"actors": args.actors})
    if args.teacher:
        cfg = replace(cfg, distill={"teacher": str(Path(args.teacher).resolve())})
    private_dir(run_dir)
    cfg.save(run_dir / "config.yaml")
    if args.ray_cpus is not None and args.ray_cpus < 1:
        raise ValueError(f"--ray-cpus must be >= 1, got {args.ray_cpus}")
    cluster = Cluster.create(cfg, run_dir, detached=True, num_cpus=args.ray_cpus)
    try:
        cluster.start_learner(action_dim_of(cfg))
        names = cluster.scale(cfg.runtime.actors)
        signals.check()  # a SIGTERM that Ray swallowed while the roles started
    except BaseException:
        # A failed start leaves nothing behind: no Redis, no Ray head, no state file.
        _err("cluster up failed; stopping what it started")
        try:
            cluster.shutdown(stop_ray=True)
        except Exception as err:  # noqa: BLE001 - the start's own error is the one to show
            _err(f"cleanup after the failed start: {type(err).__name__}: {err}"[:300])
        finally:
            (run_dir / STATE_FILE).unlink(missing_ok=True)
        raise
    _err(f"cluster up in {run_dir.resolve()}: learner + {len(names)} actors on Ray "
         f"{cluster.ray_address}, replay redis 127.0.0.1:{cluster.spec.port}"
         + (f" (a Redis Cluster of {cluster.spec.shards} shards)" if cluster.spec.shards > 1
            else ""))
    _err("status: make cluster-status | scale: make scale ACTORS=N | stop: make cluster-down | "
         f"Prometheus: make monitor RUN={run_dir}")
    _note_unfed_shards(names, cluster.spec.shards)
    return 0


def _note_unfed_shards(actor_names: list[str], shards: int) -> None:
    """One line when some replay shards get no writer (actor i writes shard i mod shards)."""
    from replay_service.redis_cluster import unfed_shards_note

    note = unfed_shards_note([int(name.rsplit("-", 1)[1]) for name in actor_names], shards)
    if note:
        _err(note)


def cmd_cluster_scale(args: argparse.Namespace, cfg) -> int:
    from ops.runtime.cluster import Cluster

    cluster = Cluster.attach(args.run_dir)
    names = cluster.scale(args.actors)
    _err(f"{len(names)} actors running: {', '.join(names) or '-'}")
    _note_unfed_shards(names, cluster.spec.shards)
    return 0


def cmd_cluster_status(args: argparse.Namespace, cfg) -> int:
    from ops.runtime.cluster import Cluster

    cluster = Cluster.attach(args.run_dir)
    status = cluster.status()
    if args.json:
        print(json.dumps(status, indent=2, default=str))
        return 0 if status["healthy"] else 1
    r, lrn = status["replay"], status["learner"] or {}
    print(f"run {status['run_dir']} (namespace {status['namespace']})")
    print(f"learner: updates {lrn.get('updates')}  version {lrn.get('version')}  env steps "
          f"{lrn.get('env_steps')}  scheme {lrn.get('scheme')}  last eval {lrn.get('last_eval')}")
    if r:
        print(f"replay:  {r['size_steps']} steps, {r['size_bytes'] / 1e6:.1f} MB "
              f"(x{r['compression_ratio']:.1f}), inserts {r['inserts']}, samples {r['samples']}")
    for a in status["actors"]:
        print(f"  {a.get('name', 'actor-' + str(a.get('actor')))}: env steps {a.get('env_steps')}"
              f"  episodes {a.get('episodes')}  policy v{a.get('policy_version')}  "
              f"scheme {a.get('scheme')}  metrics :{a.get('metrics_port')}")
    print(f"metrics targets: {status['metrics_targets']}")
    for problem in status["problems"]:
        print(f"PROBLEM: {problem}")
    print("healthy" if status["healthy"] else
          f"unhealthy: {len(status['problems'])} problem(s)")
    return 0 if status["healthy"] else 1


def cmd_cluster_down(args: argparse.Namespace, cfg) -> int:
    from ops.runtime.cluster import STATE_FILE, Cluster

    cluster = Cluster.attach(args.run_dir)
    summary = cluster.shutdown(stop_ray=True)
    (Path(args.run_dir) / STATE_FILE).unlink(missing_ok=True)
    _err(f"cluster down; learner stopped at {summary and summary.get('updates')} updates, "
         f"checkpoint in {Path(args.run_dir) / 'checkpoints'}")
    return 0


def cmd_replay_check(args: argparse.Namespace, cfg) -> int:
    from dataclasses import replace

    import redis

    from diswm.config import build_config
    from diswm.rediskit import describe_failure, probe
    from ops.runtime.cluster import STATE_FILE
    from ops.runtime.redis_process import stored_password
    from replay_service.check import check_replay
    from replay_service.spec import ReplaySpec, connect

    run = Path(args.run_dir)
    state_path = run / STATE_FILE
    if not state_path.is_file():
        raise ValueError(f"no cluster state at {state_path}: give the folder of a running "
                         "cluster or run")
    try:
        state = json.loads(state_path.read_text())
        cfg = build_config(state["config"])
        spec = ReplaySpec(**{k: v for k, v in state["spec"].items() if k != "password"},
                          password=stored_password(cfg, run, state.get("password_file")))
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{state_path} is not a cluster state file ({err})"[:300]) from None
    try:
        # A probe first: a stopped or hung Redis is reported within seconds, not minutes.
        probe(spec.host, spec.port, spec.password, timeout=2.0).ping()
        # One Redis or a cluster's nodes; a node that is down fails at once (it is reported).
        client = (probe(spec.host, spec.port, spec.password, timeout=30.0) if spec.shards == 1
                  else connect(replace(spec, outage_window=1), fail_fast=True))
        report = check_replay(client, spec)
    except redis.RedisError as err:
        hint = "" if isinstance(err, redis.TimeoutError) else ": is the cluster up?"
        raise ValueError(describe_failure(spec.host, spec.port, err, 2.0) + hint) from None
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"replay {spec.namespace!r}: {report['chunks']} chunks logged, "
              f"{report['records']} records, {report['meta']['size_steps']} steps")
        for problem in report["problems"]:
            print(f"PROBLEM: {problem}")
        print("consistent" if report["consistent"] else "inconsistent")
    return 0 if report["consistent"] else 1


def cmd_monitor(args: argparse.Namespace, cfg) -> int:
    from ops.runtime.monitor import start_prometheus, wait_ready

    run = Path(args.run_dir)
    if not (run / "config.yaml").is_file():
        raise ValueError(f"{run} is not a run folder (no config.yaml); point --run-dir at a "
                         "run or cluster folder")
    proc = start_prometheus(args.run_dir, args.port)  # SIGTERM stops it too (diswm.signals)
    try:
        wait_ready(args.port)
        _err(f"Prometheus on http://127.0.0.1:{args.port} scraping {args.run_dir} "
             "(Ctrl-C to stop); try: sum(rate(diswm_actor_env_steps_total[1m]))")
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return 0


def cmd_experiment(args: argparse.Namespace, cfg) -> int:
    from ops.runtime.experiment import METHODS, REPRO_TASKS, REPRODUCE, run_experiment

    if args.tasks and args.transfer != REPRODUCE:
        raise ValueError(f"--tasks is for `diswm experiment {REPRODUCE}`; a transfer "
                         f"({args.transfer}) has its own target task")
    if args.methods:
        methods = args.methods
    elif args.transfer == REPRODUCE:
        if args.baselines is not None:
            raise ValueError("reproduce: --baselines is for transfers; name the methods with "
                             "--methods (default dreamerv2_repro)")
        methods = ["dreamerv2_repro"]
    elif args.baselines is None:
        methods = ["diswm"]
    else:
        methods = ["diswm"] + (args.baselines or [m for m in METHODS if m != "diswm"])
    out = args.out or f"runs/experiments/{args.transfer}-{args.budget}"
    if args.parallel < 1:
        raise ValueError(f"--parallel must be at least 1, got {args.parallel}")
    run_experiment(args.transfer, methods=methods, seeds=args.seeds, budget=args.budget,
                   out=out, overrides=args.overrides, extra_presets=args.config,
                   parallel=args.parallel, retries=args.retries,
                   tasks=args.tasks or REPRO_TASKS, progress=_err)
    return 0


def cmd_report(args: argparse.Namespace, cfg) -> int:
    from ops.report import report

    runs = [Path(r) for r in args.runs]
    expanded = []
    for run in runs:  # a folder of runs (an experiment's runs/) counts as all of them
        if not run.is_dir():
            raise ValueError(f"{run}: no such run folder")
        found = ([run] if (run / "eval.csv").exists()
                 else sorted(p.parent for p in run.glob("*/eval.csv")))
        if not found:
            raise ValueError(f"{run} is not a run (no eval.csv in it or in its subfolders)")
        expanded += found
    published = () if args.published == ["none"] else tuple(args.published)
    result = report(expanded, args.out, published=published)
    print(result["table"], end="")
    _err(f"wrote {args.out}/results.md, aggregate.csv and " + ", ".join(
        Path(p).name for p in result["plots"]))
    return 0


def add_commands(sub, add_config_args, load_config) -> None:
    """Register the runtime's subcommands on the main parser's subparsers.

    `load_config(args)` resolves --config/--set for the commands that take them."""

    def with_config(fn):
        return lambda args: fn(args, load_config(args))

    def without_config(fn):
        return lambda args: fn(args, None)

    p = sub.add_parser("run", help="the main job: pretraining, then distributed DisWM training")
    p.add_argument("--run-dir", default=None, help="run folder (default runtime.run_dir/STAMP-TASK)")
    p.add_argument("--teacher", default=None, metavar="CKPT",
                   help="use this pretrained teacher instead of pretraining")
    p.add_argument("--skip-pretrain", action="store_true",
                   help="no stage 1: train without a teacher (DisWM without distillation)")
    add_config_args(p)
    p.set_defaults(func=with_config(cmd_run))

    cluster = sub.add_parser("cluster", help="a long-lived cluster: up, scale, status, down")
    csub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    p = csub.add_parser("up", help="start Redis, a Ray head, the learner and N actors (detached)")
    p.add_argument("--actors", type=int, default=None, help="actor count (runtime.actors)")
    p.add_argument("--teacher", default=None, metavar="CKPT", help="pretrained teacher")
    p.add_argument("--force", action="store_true", help="reuse a folder with stale state")
    p.add_argument("--ray-cpus", type=int, default=None, metavar="N",
                   help="logical CPUs of the Ray head (room to scale up later); default: the "
                        "machine's, at least one per actor plus the learner's")
    p.add_argument("--run-dir", default=DEFAULT_CLUSTER_DIR)
    add_config_args(p)
    p.set_defaults(func=with_config(cmd_cluster_up))
    p = csub.add_parser("scale", help="change the actor count live")
    p.add_argument("actors", type=int)
    p.add_argument("--run-dir", default=DEFAULT_CLUSTER_DIR)
    p.set_defaults(func=without_config(cmd_cluster_scale))
    p = csub.add_parser("status", help="learner, replay and actor state")
    p.add_argument("--json", action="store_true")
    p.add_argument("--run-dir", default=DEFAULT_CLUSTER_DIR)
    p.set_defaults(func=without_config(cmd_cluster_status))
    p = csub.add_parser("down", help="flush actors, checkpoint the learner, stop everything")
    p.add_argument("--run-dir", default=DEFAULT_CLUSTER_DIR)
    p.set_defaults(func=without_config(cmd_cluster_down))

    p = sub.add_parser("experiment", help="a transfer task: collect, pretrain, train methods x "
                                          "seeds on the runtime, report")
    p.add_argument("transfer", help="a transfer preset, e.g. cheetah_run_to_walker_walk, `all` "
                                    "for the paper's whole table, or `reproduce` for DreamerV2 "
                                    "as published on single tasks (--tasks)")
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                   help="reproduce: the tasks (default dmc:cheetah_run dmc:cartpole_swingup)")
    p.add_argument("--baselines", nargs="*", default=None, metavar="METHOD",
                   help="also run baselines: dreamerv2 dv2_finetune no_distill no_beta "
                        "(no names: all of them)")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="exactly these methods (instead of diswm + --baselines)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--budget", choices=("cpu", "paper"), default="cpu",
                   help="cpu: the `cpu` preset (reproduce: `repro_cpu`; ~45 min a run on 2 "
                        "cores); paper: 1M env steps (GPU)")
    p.add_argument("--out", default=None, help="default runs/experiments/TRANSFER-BUDGET")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="runs at once on one Ray and one Redis (each in its own namespace and "
                        "placement group; the rest wait in Ray's queue); default 1")
    p.add_argument("--retries", type=int, default=1, help="retries of a failed run")
    p.add_argument("--config", nargs="+", default=[], metavar="PRESET",
                   help="extra presets applied after the budget's")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   dest="overrides")
    p.set_defaults(func=without_config(cmd_experiment))

    p = sub.add_parser("report", help="aggregate runs over seeds: curves, CSV, markdown table")
    p.add_argument("runs", nargs="+", help="run folders, or folders of run folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--published", nargs="+", default=["dreamerv2"], metavar="METHOD",
                   help="reference methods whose published seeds are drawn beside ours on the "
                        "same task: dreamerv2 dreamerv3, or none (default dreamerv2)")
    p.set_defaults(func=without_config(cmd_report))

    p = sub.add_parser("replay", help="the replay service: consistency check")
    rsub = p.add_subparsers(dest="replay_command", required=True, metavar="ACTION")
    p = rsub.add_parser("check", help="records, commit log and counters agree (exit 1 if not)")
    p.add_argument("run_dir", metavar="RUN", help="a running cluster's or run's folder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=without_config(cmd_replay_check))

    p = sub.add_parser("monitor", help="a Prometheus server scraping a run (Debian's prometheus)")
    p.add_argument("--run-dir", default=DEFAULT_CLUSTER_DIR)
    p.add_argument("--port", type=int, default=9090)
    p.set_defaults(func=without_config(cmd_monitor))
