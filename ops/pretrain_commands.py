"""`diswm pretrain ...` subcommands (registered by ops/cli.py):

    diswm pretrain collect --task dmc:cheetah_run --frames 100000 --out data/cheetah [--workers 4]
                           [--policy LEARNER_CKPT] [--scheme A|B]
    diswm pretrain verify data/cheetah
    diswm pretrain train --data data/cheetah [--out RUN_DIR] | --resume RUN_DIR
    diswm pretrain inspect RUN_DIR/teacher.pt --data data/cheetah --out RUN_DIR/inspect
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _cfg(args: argparse.Namespace):
    from diswm.presets import load_config

    return load_config(args.config, args.overrides)


def _cmd_collect(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pretrain.collect import collect

    cfg = _cfg(args)
    frames = args.frames if args.frames is not None else cfg.pretrain.frames
    bar = tqdm(total=frames, unit="frame", file=sys.stderr, mininterval=1.0, dynamic_ncols=True)

    def progress(entry: dict, manifest: dict) -> None:
        bar.n = min(manifest["frames"], frames)
        bar.set_postfix_str(f"{entry['file']} ({len(manifest['shards'])} shards)")
        bar.refresh()

    try:
        summary = collect(cfg, args.out, task=args.task, frames=frames, workers=args.workers,
                          policy=args.policy, scheme=args.scheme, progress=progress)
    finally:
        bar.close()
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from pretrain.video_shards import read_manifest, verify

    manifest = read_manifest(args.data)
    problems = verify(args.data)
    for line in problems:
        _log(f"corrupt shard: {line}")
    print(json.dumps({"data": args.data, "task": manifest["task"], "frames": manifest["frames"],
                      "shards": len(manifest["shards"]), "complete": manifest.get("complete"),
                      "corrupt": problems}, indent=2))
    return 1 if problems else 0


def _cmd_train(args: argparse.Namespace) -> int:
    from pretrain.trainer import PretrainRunner

    if args.resume:
        if args.config or args.overrides:
            _log("note: --resume uses the run's saved config.yaml; --config/--set are ignored")
        runner = PretrainRunner(None, args.resume, data=args.data, resume=True, progress=_log)
    else:
        if not args.data:
            raise ValueError("pass --data DIR (a `diswm pretrain collect` folder) or --resume")
        cfg = _cfg(args)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = args.out or (Path(cfg.runtime.run_dir) /
                           f"pretrain-{stamp}-{cfg.pretrain.source_task.replace(':', '_')}")
        _log(f"run folder: {out}")
        runner = PretrainRunner(cfg, out, data=args.data, progress=_log)
    summary = runner.run()
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from pretrain.teacher_inspection import inspect_checkpoint

    report = inspect_checkpoint(args.checkpoint, args.data, args.out, samples=args.samples,
                                seed=args.seed, progress=_log)
    keys = ("mig", "sap", "mig_top5", "sap_top5", "mig_colours", "mig_state", "sap_colours", "sap_state",
            "recon_mse", "files")
    print(json.dumps({k: report[k] for k in keys}, indent=2))
    return 0


def add_pretrain_parser(sub, add_config_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register `pretrain collect|verify|train|inspect` on the top-level subparsers."""
    pre = sub.add_parser("pretrain", help="stage 1: distracting videos -> video model -> teacher")
    pre_sub = pre.add_subparsers(dest="pretrain_command", required=True, metavar="ACTION")

    p = pre_sub.add_parser("collect", help="collect distracting videos into shards (resumable)")
    p.add_argument("--task", default=None, help="source task (default: pretrain.source_task)")
    p.add_argument("--frames", type=int, default=None, help="frames (default: pretrain.frames)")
    p.add_argument("--out", required=True, help="dataset folder (re-run the same command to "
                   "resume an interrupted collection)")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel Ray workers; 0 = in-process (default: pretrain.workers)")
    p.add_argument("--policy", default=None, metavar="CKPT",
                   help="learner checkpoint whose policy acts (default: uniform random)")
    p.add_argument("--scheme", choices=("A", "B"), default=None,
                   help="colour scheme (default: distraction.scheme)")
    add_config_args(p)
    p.set_defaults(func=_cmd_collect)

    p = pre_sub.add_parser("verify", help="check every shard against the manifest")
    p.add_argument("data", help="dataset folder")
    p.set_defaults(func=_cmd_verify)

    p = pre_sub.add_parser("train", help="train the action-free video model; writes teacher.pt")
    p.add_argument("--data", default=None, help="dataset folder from `pretrain collect`")
    p.add_argument("--out", default=None, metavar="RUN_DIR",
                   help="run folder (default: runtime.run_dir/pretrain-STAMP-TASK)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run folder")
    add_config_args(p)
    p.set_defaults(func=_cmd_train)

    p = pre_sub.add_parser("inspect", help="reconstructions, latent traversals, MIG/SAP JSON")
    p.add_argument("checkpoint", help="teacher.pt or checkpoints/latest.pt of a pretrain run")
    p.add_argument("--data", required=True, help="dataset folder (with the ground-truth factors)")
    p.add_argument("--out", required=True, help="output folder for PNGs and metrics.json")
    p.add_argument("--samples", type=int, default=10_000,
                   help="frames used for the disentanglement metrics")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_inspect)


__all__ = ["add_pretrain_parser"]
