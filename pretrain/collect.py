"""Collect distracting videos from a colour-distracted source task into shards (stage 1 data).

    summary = collect(cfg, "data/cheetah", frames=100_000, workers=4)      # Ray tasks
    summary = collect(cfg, "data/cheetah", frames=2_000, workers=0)        # in this process

The work is a list of shards fixed by (target frames, frames per episode, episodes per shard):
shard i runs ``episodes`` whole episodes in an env seeded with ``shard_seed(seed, i)``, acting
with a uniform-random policy (or a checkpointed one) seeded the same way. Every shard is a pure
function of its index, so running them in any order, on any number of workers, or across an
interruption gives the same files. The manifest lists only completed shards and is rewritten
atomically after each one; on resume, the listed shards are kept, leftovers of an interrupted
write (``*.tmp`` files, shard files no manifest lists) are removed, and only missing shards run.
If episodes end early (terminations), extra shards are planned until the target is reached, the
same way in every run.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diswm import signals
from diswm.config import Config, ConfigError, build_config, replace
from diswm.envs import make_env
from diswm.rollout import CheckpointPolicy, RandomPolicy, concat_episodes, file_digest, run_episode
from pretrain.video_shards import (
    FORMAT,
    MANIFEST,
    CorruptShard,
    encode_shard,
    read_manifest,
    shard_name,
    shard_seed,
    store_shard,
    write_manifest,
)

#: Manifest keys that must match for a folder to be resumed.
IDENTITY_KEYS = ("task", "scheme", "seed", "policy", "target_frames", "episodes_per_shard",
                 "codec", "env", "distraction")


@dataclass(frozen=True)
class ShardSpec:
    index: int
    seed: int
    episodes: int


def plan_shards(first_index: int, frames: int, frames_per_episode: int, episodes_per_shard: int,
                base_seed: int) -> list[ShardSpec]:
    """Shards from `first_index` holding ceil(frames / frames_per_episode) episodes."""
    episodes = max(1, math.ceil(frames / frames_per_episode))
    count = math.ceil(episodes / episodes_per_shard)
    specs = []
    for k in range(count):
        n = min(episodes_per_shard, episodes - k * episodes_per_shard)
        i = first_index + k
        specs.append(ShardSpec(i, shard_seed(base_seed, i), n))
    return specs


def collect_shard(cfg_dict: Mapping[str, Any], task: str, spec: ShardSpec,
                  policy: str | bytes, codec: str) -> tuple[bytes, dict[str, Any]]:
    """Run one shard's episodes; returns its encoded file and manifest entry, which the driver
    stores (`store_shard`): a collector on another node writes nothing on its own disk. This
    is the body of a Ray task and of the in-process path alike. `policy` is a checkpoint's path
    (in process), its bytes (a Ray task on any node), or empty (the random policy)."""
    cfg = build_config(cfg_dict)
    if policy:
        import torch

        torch.set_num_threads(1)
    with contextlib.ExitStack() as stack:
        if isinstance(policy, bytes):  # a safe load needs a file: a private one, removed after
            tmp = stack.enter_context(tempfile.NamedTemporaryFile(suffix=".pt"))
            tmp.write(policy)
            tmp.flush()
            policy = tmp.name
        env = stack.enter_context(make_env(cfg.env, cfg.distraction, seed=spec.seed, task=task))
        act = (CheckpointPolicy(policy, seed=spec.seed) if policy
               else RandomPolicy(env.act_space.shape, seed=spec.seed))
        episodes = [run_episode(env, act) for _ in range(spec.episodes)]
    return encode_shard(spec.index, spec.seed, concat_episodes(episodes), codec)


def _probe(cfg: Config, task: str, policy: str | None) -> dict[str, Any]:
    """Frames per full episode and a check that a policy checkpoint fits the task."""
    with make_env(cfg.env, cfg.distraction, seed=0, task=task) as env:
        info = {"frames_per_episode": math.ceil(env.time_limit / cfg.env.action_repeat) + 1,
                "action_dim": int(env.act_space.shape[0])}
    if policy:
        p = CheckpointPolicy(policy)
        if p.action_dim != info["action_dim"]:
            raise ValueError(f"--policy {policy}: acts in {p.action_dim} dims but {task} needs "
                             f"{info['action_dim']}")
        if p.size != cfg.env.size:
            raise ValueError(f"--policy {policy}: sees {p.size}px images, env.size is "
                             f"{cfg.env.size}")
    return info


def _prepare_folder(folder: Path, header: dict[str, Any]) -> dict[str, Any]:
    """A fresh manifest, or the existing one after checking that it asks for the same data."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / MANIFEST).exists():
        foreign = [p.name for p in folder.iterdir()]
        if foreign:
            raise ValueError(f"--out {folder} is not empty and has no {MANIFEST} "
                             f"(found {', '.join(sorted(foreign)[:3])}); use a new folder")
        manifest = {**header, "complete": False, "shards": []}
        write_manifest(folder, manifest)
        return read_manifest(folder)
    manifest = read_manifest(folder)
    for key in IDENTITY_KEYS:
        if manifest.get(key) != header[key]:
            raise ValueError(f"--out {folder} holds a collection with {key}={manifest.get(key)!r}"
                             f", this one asks for {key}={header[key]!r}; use a new folder")
    listed = {e["file"] for e in manifest["shards"]}
    for entry in manifest["shards"]:
        path = folder / entry["file"]
        if not path.exists() or path.stat().st_size != entry["bytes"]:
            raise CorruptShard(f"{entry['file']}: listed in the manifest but missing or of the "
                               "wrong size; delete its entry from manifest.json to recollect it")
    for path in folder.iterdir():  # leftovers of an interrupted write
        if path.name.endswith(".tmp") or (path.name.startswith("shard-") and path.name not in listed):
            path.unlink()
    return manifest


def collect(cfg: Config, out: str | Path, *, task: str | None = None, frames: int | None = None,
            workers: int | None = None, policy: str | None = None, scheme: str | None = None,
            progress: Callable[[dict[str, Any], dict[str, Any]], None] | None = None
            ) -> dict[str, Any]:
    """Collect (or finish collecting) a dataset into `out`; returns a summary.

    `progress(entry, manifest)` is called after each shard lands in the manifest."""
    task = task or cfg.pretrain.source_task
    frames = cfg.pretrain.frames if frames is None else int(frames)
    workers = cfg.pretrain.workers if workers is None else int(workers)
    if frames < 1:
        raise ConfigError(f"--frames must be at least 1, got {frames}")
    if workers < 0:
        raise ConfigError(f"--workers must be 0 (in-process) or more, got {workers}")
    if scheme:
        cfg = replace(cfg, distraction={"scheme": scheme})
    policy_path = str(Path(policy).resolve()) if policy else ""
    if policy_path and not Path(policy_path).is_file():
        raise ValueError(f"--policy {policy}: no such file")
    folder = Path(out)
    info = _probe(cfg, task, policy_path)
    header = {
        "format": FORMAT, "task": task,
        "scheme": cfg.distraction.scheme if cfg.distraction.enabled else None,
        "seed": cfg.pretrain.seed,
        "policy": ({"kind": "checkpoint", "path": policy_path,
                    "checksum": file_digest(policy_path)} if policy_path else {"kind": "random"}),
        "target_frames": frames, "episodes_per_shard": cfg.pretrain.episodes_per_shard,
        "codec": cfg.pretrain.compression, "frames_per_episode": info["frames_per_episode"],
        "env": dict(cfg.to_dict()["env"]), "distraction": dict(cfg.to_dict()["distraction"]),
    }
    manifest = _prepare_folder(folder, header)
    done = {e["index"]: e for e in manifest["shards"]}
    eps, fpe = cfg.pretrain.episodes_per_shard, info["frames_per_episode"]
    planned = plan_shards(0, frames, fpe, eps, cfg.pretrain.seed)
    setup_start = time.perf_counter()
    runner = _RayRunner(workers, cfg.runtime.actor_resource_map()) if workers > 0 else None
    start, new_frames = time.perf_counter(), 0
    try:
        while True:
            todo = [s for s in planned if s.index not in done]
            args = (cfg.to_dict(), task)
            results = (runner.run(todo, args, policy_path, cfg.pretrain.compression) if runner
                       else (collect_shard(*args, s, policy_path, cfg.pretrain.compression)
                             for s in todo))
            for data, entry in results:
                entry = store_shard(folder, data, entry)
                done[entry["index"]] = entry
                new_frames += entry["frames"]
                manifest["shards"] = list(done.values())
                write_manifest(folder, manifest)
                manifest = read_manifest(folder)
                if progress:
                    progress(entry, manifest)
            total = sum(done[s.index]["frames"] for s in planned)
            if total >= frames:
                break
            # Episodes ended early: plan more shards, deterministically from the totals so far.
            planned += plan_shards(planned[-1].index + 1, frames - total, fpe, eps,
                                   cfg.pretrain.seed)
    finally:
        if runner:
            runner.close()
    manifest["complete"] = True
    write_manifest(folder, manifest)
    seconds = time.perf_counter() - start
    manifest = read_manifest(folder)
    return {"out": str(folder), "task": task, "scheme": header["scheme"],
            "frames": manifest["frames"], "episodes": manifest["episodes"],
            "shards": len(manifest["shards"]), "new_frames": new_frames, "workers": workers,
            "seconds": seconds, "frames_per_second": new_frames / seconds if seconds else 0.0,
            "setup_seconds": start - setup_start}  # Ray start-up, not in frames_per_second


class _RayRunner:
    """Shards as Ray tasks on a local Ray (or the one already initialised), at most 2 per worker
    in flight; results are yielded as they complete (any order). A task returns its shard's
    bytes through Ray's object store, so it may run on any node; on a cluster the driver joined,
    tasks ask for the actors' custom resources (runtime.actor_resources) and go where they go."""

    def __init__(self, workers: int, resources: Mapping[str, float] | None = None):
        import ray

        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            import logging

            # address="local": our own instance, never a stray cluster this machine last ran
            signals.ray_init(address="local", num_cpus=workers, include_dashboard=False,
                             logging_level=logging.WARNING, log_to_driver=False)
        opts: dict[str, Any] = {"num_cpus": 1, "max_retries": 2}
        if resources and not self._started:
            opts["resources"] = dict(resources)
        self._remote = ray.remote(**opts)(collect_shard)
        self._in_flight = 2 * workers

    def run(self, specs, args, policy_path, codec: str):
        ray = self._ray
        pending: dict[Any, ShardSpec] = {}
        queue = list(specs)
        if policy_path:  # the checkpoint travels, not its path: a node may lack the file
            policy_path = ray.put(Path(policy_path).read_bytes())
        while queue or pending:
            while queue and len(pending) < self._in_flight:
                spec = queue.pop(0)
                pending[self._remote.remote(*args, spec, policy_path, codec)] = spec
            ready, _ = ray.wait(list(pending), num_returns=1)
            signals.check()  # Ray can swallow the KeyboardInterrupt of a SIGTERM
            spec = pending.pop(ready[0])
            try:
                yield ray.get(ready[0])
            except ray.exceptions.RayError as err:
                for ref in pending:
                    ray.cancel(ref)
                raise RuntimeError(f"collecting {shard_name(spec.index)} failed: {err}") from None

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()


__all__ = ["ShardSpec", "collect", "collect_shard", "plan_shards"]
