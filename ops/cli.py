"""The `diswm` command line.

    diswm envs list
    diswm envs show dmc:cheetah_run --scheme B --frames 16 --out frames.png
    diswm config show --config debug --set train.steps=5000
    diswm run --config quickstart cheetah_run_to_walker_walk
    diswm cluster up --actors 4 | scale 8 | status | down
    diswm bench envs --json bench/envs.json
    diswm bench replay --json bench/replay.json
    diswm bench learner --json bench/learner.json
    diswm train --config debug --serial [--teacher CKPT] [--resume RUN_DIR]
    diswm inspect RUN_DIR [--checkpoint PATH] [--episodes 1] [--out RUN_DIR/inspect]
    diswm pretrain collect --task dmc:cheetah_run --frames 10000 --out data/cheetah [--workers 2]
    diswm pretrain train --data data/cheetah --out runs/pretrain [--resume RUN_DIR]
    diswm pretrain inspect runs/pretrain/teacher.pt --data data/cheetah --out runs/pretrain/inspect

Every command that reads settings takes ``--config PRESET [PRESET ...]`` (applied in order over
``defaults``) and ``--set section.key=value [...]``; a bad key or value fails at once, naming it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from diswm.config import Config, ConfigError
from diswm.control import NamespaceHeld, RunFailed
from diswm.presets import load_config


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", nargs="+", default=[], metavar="PRESET",
                   help="presets from diswm/configs/presets.yaml (or .yaml files), in order")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   dest="overrides", help="overrides such as train.steps=20000")


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


# -- envs ---------------------------------------------------------------------------------------


def _cmd_envs_list(args: argparse.Namespace) -> int:
    from diswm.envs import PAPER_TASKS, list_tasks

    tasks = list_tasks()
    if args.all:
        for task in tasks:
            print(task + ("   (paper)" if task in PAPER_TASKS else ""))
    else:
        for task in PAPER_TASKS:
            print(task)
        print(f"# {len(tasks)} tasks in all: `diswm envs list --all`")
    return 0


def _cmd_envs_show(args: argparse.Namespace) -> int:
    from diswm.config import replace
    from diswm.envs import make_env
    from diswm.envs.viz import rollout_frames, write_frames

    cfg = _config(args)
    if args.scheme:
        cfg = replace(cfg, distraction={"scheme": args.scheme, "enabled": True})
    if args.frames < 1:
        raise ConfigError(f"--frames must be at least 1, got {args.frames}")
    every = args.every if args.every is not None else (1 if args.out.endswith(".gif") else 10)
    with make_env(cfg.env, cfg.distraction, seed=args.seed, task=args.task) as env:
        frames = rollout_frames(env, args.frames, max(every, 1), seed=args.seed)
    out = write_frames(frames, args.out, scale=args.scale)
    print(f"wrote {len(frames)} frames of {args.task} (scheme {cfg.distraction.scheme}, "
          f"render {cfg.env.render_quality}) to {out}")
    return 0


# -- config -------------------------------------------------------------------------------------


def _cmd_config_show(args: argparse.Namespace) -> int:
    from diswm.presets import preset_names

    if args.presets:
        print("\n".join(preset_names()))
        return 0
    print(_config(args).to_yaml(), end="")
    return 0


# -- train --------------------------------------------------------------------------------------


def _cmd_train(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from diswm.config import replace

    if not args.serial:
        raise ConfigError("only the serial runner is available here: add --serial")
    from learner.serial import SerialRunner

    if args.resume:
        run_dir = Path(args.resume)
        cfg = Config.load(run_dir / "config.yaml")
    else:
        cfg = _config(args)
        if args.teacher:
            cfg = replace(cfg, distill={"teacher": args.teacher})
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(args.run_dir or Path(cfg.runtime.run_dir) /
                       f"{stamp}-{cfg.env.task.replace(':', '_')}")
    print(f"run folder: {run_dir}", file=sys.stderr)
    summary = SerialRunner(cfg, run_dir, resume=bool(args.resume),
                           progress=lambda msg: print(msg, file=sys.stderr)).run()
    print(json.dumps({k: summary[k] for k in ("task", "updates", "final_return",
                                              "wall_seconds")}, indent=2))
    return 0


# -- inspect ------------------------------------------------------------------------------------


def _cmd_inspect(args: argparse.Namespace) -> int:
    from learner.run_inspection import format_report, inspect_run

    result = inspect_run(args.run, checkpoint=args.checkpoint, episodes=args.episodes,
                         out=args.out, seed=args.seed)
    print(format_report(result))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from learner.run_inspection import evaluate_run

    r = evaluate_run(args.run, checkpoint=args.checkpoint, episodes=args.episodes,
                     video=args.video, seed=args.seed)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"{r['checkpoint']} ({r['updates']} updates, env step {r['env_steps']}, scheme "
          f"{r['scheme']}): return {r['return_mean']:.1f} +- {r['return_std']:.1f} over "
          f"{len(r['returns'])} episode(s) of {r['task']} (seed {r['seed']})")
    if r["video"]:
        print(f"wrote {r['video']}")
    return 0


def _cmd_tensorboard(args: argparse.Namespace) -> int:
    import subprocess
    from pathlib import Path

    from diswm.tracking import TB_DIR

    root = Path(args.runs)
    if not root.is_dir():
        raise ValueError(f"{root}: no such run folder")
    if not (root / TB_DIR).is_dir() and not any(root.glob(f"**/{TB_DIR}")):
        raise ValueError(f"{root}: no TensorBoard events ({TB_DIR}/) in it or below it "
                         "(logging.tensorboard is on by default for new runs)")
    print(f"TensorBoard on http://127.0.0.1:{args.port}/ over {root.resolve()} (Ctrl-C stops it)",
          file=sys.stderr)
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(root),
           "--host", "127.0.0.1", "--port", str(args.port)]
    try:
        return subprocess.run(cmd).returncode
    except KeyboardInterrupt:
        return 0


# -- bench --------------------------------------------------------------------------------------


def _cmd_bench_envs(args: argparse.Namespace) -> int:
    from ops.bench.envs import bench_envs

    cfg = _config(args)
    report = bench_envs(cfg, steps=args.steps, rounds=args.rounds, json_path=args.json,
                        progress=lambda msg: print(msg, file=sys.stderr))
    summary = {k: report[k] for k in ("task", "env_steps_per_s", "fast_render_speedup",
                                      "no_shadows_speedup", "physics_only_vs_full_render")}
    print(json.dumps(summary, indent=2))
    if args.json:
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _cmd_bench_replay(args: argparse.Namespace) -> int:
    from ops.bench.replay import bench_replay

    cfg = _config(args)
    if args.shards:
        from ops.bench.replay_shards import bench_shards

        report = bench_shards(cfg, args.shards, writers=args.writers, seconds=args.seconds,
                              json_path=args.json,
                              progress=lambda msg: print(msg, file=sys.stderr))
        print(json.dumps({"by_shards": {n: {k: r[k] for k in (
            "insert_steps_per_s", "insert_ratio_vs_first", "sample_batches_per_s",
            "sample_ratio_vs_first", "in_bytes_per_s_per_shard")}
            for n, r in report["by_shards"].items()}, "estimate": report["estimate"]}, indent=2))
        if args.json:
            print(f"wrote {args.json}", file=sys.stderr)
        return 0
    report = bench_replay(cfg, steps=args.steps, batches=args.batches, rounds=args.rounds,
                          json_path=args.json, progress=lambda msg: print(msg, file=sys.stderr))
    keys = ("compression", "insert_steps_per_s", "sample_batches_per_s", "sample_mb_per_s",
            "sample_batch_seconds", "prefetch_wait_seconds_median", "compression_ratio",
            "insert_ratio_vs_inprocess", "sample_ratio_vs_inprocess",
            "sample_ratio_vs_inprocess_cached", "sample_ratio_vs_inprocess_workers",
            "sample_workers", "sample_ratio_whole_chunk_records")
    print(json.dumps({k: report[k] for k in keys}, indent=2))
    if args.json:
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _cmd_bench_actors(args: argparse.Namespace) -> int:
    from ops.bench.actors import bench_actors

    report = bench_actors(_config(args), seconds=args.seconds, json_path=args.json,
                          progress=lambda msg: print(msg, file=sys.stderr))
    keys = ("env_steps_per_s", "actor_efficiency_vs_raw_env", "scaling_2_vs_1", "weight_bytes",
            "weight_publish_seconds", "weight_fetch_seconds", "policy_compile",
            "policy_compile_speedup", "policy_step_ms", "policy_compile_seconds")
    print(json.dumps({k: report[k] for k in keys}, indent=2))
    return 0


def _cmd_bench_learner(args: argparse.Namespace) -> int:
    from ops.bench.learner import bench_learner

    report = bench_learner(presets=args.config, overrides=args.overrides, sizes=args.sizes,
                           modes=args.modes, updates=args.updates, rounds=args.rounds,
                           host_memory=args.host_memory, host_memory_ab=args.host_memory_ab,
                           teacher=args.teacher, json_path=args.json,
                           progress=lambda msg: print(msg, file=sys.stderr))
    keys = ("batch", "seconds_per_update", "speedup_vs_eager", "gflops",
            "fraction_of_matmul_peak", "peak_memory_bytes", "compile_seconds", "vs_authors",
            "vs_authors_same_run_estimate", "stored_teacher_speedup")
    summary = {size: {k: r[k] for k in keys if k in r} for size, r in report["results"].items()}
    if "host_memory_ab" in report:
        summary["host_memory_ab"] = {size: {k: ab[k] for k in ("seconds_per_update", "speedup")}
                                     for size, ab in report["host_memory_ab"].items()}
    print(json.dumps(summary, indent=2))
    if args.json:
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


# -- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diswm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    envs = sub.add_parser("envs", help="the colour-distracted task suite")
    envs_sub = envs.add_subparsers(dest="envs_command", required=True, metavar="ACTION")
    p = envs_sub.add_parser("list", help="list task ids")
    p.add_argument("--all", action="store_true", help="every dm_control suite task too")
    p.set_defaults(func=_cmd_envs_list)
    p = envs_sub.add_parser("show", help="write distracted frames as a PNG grid or a GIF")
    p.add_argument("task", help="task id, e.g. dmc:cheetah_run or mujoco:pusher")
    p.add_argument("--scheme", choices=("A", "B"), help="colour scheme (default: the config's)")
    p.add_argument("--frames", type=int, default=16, help="number of frames (default 16)")
    p.add_argument("--every", type=int, default=None,
                   help="agent steps between frames (default 10 for .png, 1 for .gif)")
    p.add_argument("--scale", type=int, default=2, help="pixel upscaling for viewing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output file, .png (grid) or .gif")
    _add_config_args(p)
    p.set_defaults(func=_cmd_envs_show)

    config = sub.add_parser("config", help="resolved configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    p = config_sub.add_parser("show", help="print the resolved config as YAML")
    p.add_argument("--presets", action="store_true", help="list preset names instead")
    _add_config_args(p)
    p.set_defaults(func=_cmd_config_show)

    p = sub.add_parser("train", help="online DisWM training (serial runner: --serial)")
    p.add_argument("--serial", action="store_true",
                   help="env, replay, learner and evaluation in one process (CPU friendly)")
    p.add_argument("--teacher", default=None, metavar="CKPT",
                   help="pretrained teacher checkpoint (sets distill.teacher)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run folder")
    p.add_argument("--run-dir", default=None, help="run folder (default: runtime.run_dir/STAMP-TASK)")
    _add_config_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("inspect", help="a run's eval history and its world model's open-loop "
                       "prediction on held-out episodes")
    p.add_argument("run", metavar="RUN", help="run folder (diswm train / diswm run)")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="learner checkpoint (default: RUN/checkpoints/latest.pt)")
    p.add_argument("--episodes", type=int, default=1, help="held-out eval episodes (default 1)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where the open-loop PNG goes (default: RUN/inspect)")
    p.add_argument("--seed", type=int, default=None,
                   help="eval env seed (default: train.seed + 20000, unlike training's evals)")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("eval", help="evaluate a run's checkpoint (latest, best or a file) "
                       "without training, optionally with a video of an episode")
    p.add_argument("run", metavar="RUN", help="run folder (diswm train / diswm run)")
    p.add_argument("--checkpoint", default="latest", metavar="best|latest|PATH",
                   help="which checkpoint: latest (default), best (by evaluation return) or a "
                        "file")
    p.add_argument("--episodes", type=int, default=10, help="episodes (default 10)")
    p.add_argument("--video", default=None, metavar="OUT.mp4",
                   help="write the first episode beside the model's reconstruction here")
    p.add_argument("--seed", type=int, default=None,
                   help="env seed (default: train.seed + 20000, unlike training's evals)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("tensorboard", help="a TensorBoard server on loopback over one run or a "
                       "folder of runs")
    p.add_argument("runs", metavar="RUN|RUNS", help="a run folder, or a folder of run folders")
    p.add_argument("--port", type=int, default=6006)
    p.set_defaults(func=_cmd_tensorboard)

    from ops.pretrain_commands import add_pretrain_parser

    add_pretrain_parser(sub, _add_config_args)

    from ops.runtime.commands import add_commands as add_runtime_commands

    add_runtime_commands(sub, _add_config_args, _config)

    bench = sub.add_parser("bench", help="benchmarks (JSON with a same-run baseline)")
    bench_sub = bench.add_subparsers(dest="bench_name", required=True, metavar="NAME")
    p = bench_sub.add_parser("envs", help="env steps/s: default scene vs fast scene vs physics")
    p.add_argument("--steps", type=int, default=300, help="agent steps per case per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", default=None, metavar="FILE", help="write the report here")
    _add_config_args(p)
    p.set_defaults(func=_cmd_bench_envs)
    p = bench_sub.add_parser("replay", help="Redis replay vs in-process buffer: insert/sample")
    p.add_argument("--steps", type=int, default=6000, help="steps inserted into each store")
    p.add_argument("--batches", type=int, default=6, help="batches sampled per case per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--shards", type=int, nargs="+", default=None, metavar="N",
                   help="instead: the replay on N shards (Redis Cluster; 1 = one Redis) for "
                        "each N, writer processes and one sampler, ratios to the first N")
    p.add_argument("--writers", type=int, default=4, help="writer processes (with --shards)")
    p.add_argument("--seconds", type=float, default=8.0,
                   help="measurement window per shard count (with --shards)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the report here")
    _add_config_args(p)
    p.set_defaults(func=_cmd_bench_replay)
    p = bench_sub.add_parser("actors", help="one Ray actor vs a plain loop; 2 actors vs 1")
    p.add_argument("--seconds", type=float, default=20.0, help="measurement window per case")
    p.add_argument("--json", default=None, metavar="FILE", help="write the report here")
    _add_config_args(p)
    p.set_defaults(func=_cmd_bench_actors)
    p = bench_sub.add_parser("learner", help="learner updates/s and peak memory: eager vs faster")
    p.add_argument("--sizes", nargs="+", default=["defaults", "debug"],
                   choices=("defaults", "debug", "debug_dreamerv2"),
                   help="model sizes (defaults: batch 50x50; debug_dreamerv2: the debug size with "
                        "DreamerV2's conv encoder/decoder)")
    p.add_argument("--modes", nargs="+",
                   default=["eager", "channels_last", "bf16", "bf16_compile", "fastconv_compile"],
                   choices=("eager", "channels_last", "compile", "bf16", "bf16_compile", "fp16",
                            "bf16_cudagraphs", "fastconv", "fastconv_compile", "stored_teacher"),
                   help="eager (fp32, NCHW) is the baseline; fp16 and bf16_cudagraphs run only "
                        "on CUDA; stored_teacher needs --teacher")
    p.add_argument("--updates", type=int, default=1, help="updates per case per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--host-memory", choices=("reuse", "system"), default="reuse",
                   help="freed host memory kept for reuse (the learner's default) or glibc's "
                        "own malloc, for the whole run (train.reuse_host_memory)")
    p.add_argument("--host-memory-ab", action="store_true",
                   help="also time reuse on vs off in fresh, alternated processes per size")
    p.add_argument("--teacher", action="store_true",
                   help="give every learner a frozen teacher, as DisWM's learner has (mode "
                        "stored_teacher: its latents come with the batch, as actors store them)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the report here")
    _add_config_args(p)
    p.set_defaults(func=_cmd_bench_learner)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from diswm import signals

    parser = build_parser()
    args = parser.parse_args(argv)
    signals.stop_on_sigterm()  # SIGTERM stops a command as Ctrl-C does: cleanup runs
    try:
        return int(args.func(args) or 0)
    except (ConfigError, ValueError, OSError, NamespaceHeld, RunFailed) as err:
        if not signals.terminated():  # a stop by SIGTERM can surface as any of these
            print(f"diswm: error: {err}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        if not signals.terminated():
            print("diswm: interrupted", file=sys.stderr)
            return 130
    print("diswm: terminated (SIGTERM)", file=sys.stderr)
    return 143


if __name__ == "__main__":
    sys.exit(main())
