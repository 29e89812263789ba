"""`diswm bench replay --shards 1 2 3`: the replay on 1, 2, 3 shards (a Redis Cluster of that
many masters; 1 = the single Redis server), each driven by the same writer processes and one
sampler process for the same window, in one run.

Per shard count: insert steps/s (all writers), sample batches/s (the sampler, cache off), and per
shard the bytes/s into and out of its Redis node and the CPU its Redis used (INFO), with ratios to
1 shard. From the figures, on paper: how many shards `actors` actors at `frames_per_s` each would
need (``estimate``): the stored bytes/s they produce over what one Redis node takes per second
of its own CPU (Redis runs commands on one core), at `target_utilization` of that core.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from diswm.config import Config
from ops.bench.common import write_report

_NODE_STATS = ("total_net_input_bytes", "total_net_output_bytes")


def _write_worker(spec, frames_path: str, shard: int, stream: str, seconds: float, start,
                  out) -> None:
    """One actor stand-in: writes the recorded steps to its shard as fast as it can."""
    from replay_service.writer import ReplayWriter

    with np.load(frames_path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    n = len(arrays["reward"])
    steps = [{k: v[i] for k, v in arrays.items()} for i in range(n)]
    episode = (int(np.flatnonzero(arrays["is_last"])[0]) + 1) if arrays["is_last"].any() else n
    writer = ReplayWriter(spec, shard=shard)
    out.put(("ready", stream))
    start.wait()
    deadline, added, i = time.perf_counter() + seconds, 0, 0
    t0 = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(spec.chunk_length):
            writer.add(stream, steps[i % episode])
            i += 1
        added += spec.chunk_length
    writer.flush(force=True)
    out.put(("writer", stream, added, time.perf_counter() - t0))
    writer.close()


def _sample_worker(spec, batch: int, length: int, seconds: float, start, out) -> None:
    """The learner stand-in: samples (batch, length) batches, cache off, for the window."""
    from replay_service.sampler import ReplaySampler

    sampler = ReplaySampler(spec, seed=0, cache_chunks=0)
    out.put(("ready", "sampler"))
    start.wait()
    t0 = time.perf_counter()
    sampler.sample(batch, length, timeout=60)  # waits for the writers' first chunks
    deadline, batches = time.perf_counter() + seconds, 0
    t1 = time.perf_counter()
    while time.perf_counter() < deadline:
        sampler.sample(batch, length, timeout=60)
        batches += 1
    out.put(("sampler", batches, time.perf_counter() - t1, t1 - t0))
    sampler.close()


def _node_stats(client) -> dict[str, float]:
    stats, cpu = client.info("stats"), client.info("cpu")
    return {**{k: float(stats[k]) for k in _NODE_STATS},
            "cpu": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])}


def _save_frames(cfg: Config, n: int, path: Path) -> int:
    from ops.bench.replay import _frames
    from replay_service.chunks import normalise_step

    steps = [normalise_step(s) for s in _frames(cfg, n, cfg.train.seed)]
    np.savez(path, **{k: np.stack([s[k] for s in steps]) for k in steps[0]})
    return sum(v.nbytes for v in steps[0].values())


def bench_shards(cfg: Config, shard_counts: list[int], *, writers: int = 4,
                 seconds: float = 8.0, actors: int = 1000, frames_per_s: float = 150.0,
                 target_utilization: float = 0.5, json_path=None, progress=print
                 ) -> dict[str, Any]:
    from replay_service.redis_cluster import LocalRedisCluster
    from replay_service.server import RedisServer
    from replay_service.spec import ReplaySpec

    if not shard_counts or min(shard_counts) < 1:
        raise ValueError(f"--shards needs shard counts >= 1, got {shard_counts}")
    batch, length = cfg.train.batch_size, cfg.train.batch_length
    ctx = mp.get_context("spawn")
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="diswm-bench-shards-") as tmp:
        frames = Path(tmp) / "frames.npz"
        progress(f"recording 500 real steps of {cfg.env.task} ...")
        step_bytes = _save_frames(cfg, 500, frames)
        for n in shard_counts:
            where = Path(tmp) / f"shards{n}"
            if n == 1:  # the single-server path (replay.shards = 1)
                store = RedisServer(where, persistence=cfg.replay.persistence,
                                    fsync=cfg.replay.fsync).start()
                nodes = [store]
            else:
                store = LocalRedisCluster(where, n, persistence=cfg.replay.persistence,
                                          fsync=cfg.replay.fsync).start()
                nodes = store.nodes
            try:
                spec = ReplaySpec(
                    port=nodes[0].port, password=store.password,
                    namespace=f"bench-shards-{uuid.uuid4().hex[:6]}",
                    capacity=cfg.replay.capacity, chunk_length=cfg.replay.chunk_length,
                    compression=cfg.replay.compression, samples_per_insert=0.0,
                    min_size=length, selector="uniform", shards=n,
                    cluster_nodes=tuple(f"127.0.0.1:{node.port}" for node in nodes[1:]),
                    block_steps=cfg.replay.block_steps,
                    sample_threads=cfg.replay.sample_threads)
                progress(f"{n} shard(s): {writers} writer processes + 1 sampler for "
                         f"{seconds:g} s ...")
                results[n] = _drive(ctx, spec, nodes, frames, writers, seconds, batch, length)
            finally:
                store.stop()
            r = results[n]
            progress(f"{n} shard(s): insert {r['insert_steps_per_s']:.0f} steps/s, sample "
                     f"{r['sample_batches_per_s']:.2f} batches/s, in "
                     + ", ".join(f"{b / 1e6:.1f}" for b in r["in_bytes_per_s_per_shard"])
                     + " MB/s per shard")
    base = results[shard_counts[0]]
    for r in results.values():
        r["insert_ratio_vs_first"] = r["insert_steps_per_s"] / base["insert_steps_per_s"]
        r["sample_ratio_vs_first"] = (r["sample_batches_per_s"] / base["sample_batches_per_s"]
                                      if base["sample_batches_per_s"] else None)
    estimate = _estimate(results, step_bytes, actors, frames_per_s, target_utilization)
    return write_report(json_path, {
        "bench": "replay-shards",
        "task": cfg.env.task,
        "baseline": f"{shard_counts[0]} shard(s) in the same run",
        "writers": writers, "samplers": 1, "seconds": seconds, "batch": [batch, length],
        "compression": cfg.replay.compression, "chunk_length": cfg.replay.chunk_length,
        "block_steps": cfg.replay.block_steps, "persistence": cfg.replay.persistence,
        "fsync": cfg.replay.fsync, "raw_bytes_per_step": step_bytes,
        "writer_shards": "writer i writes shard i mod shards",
        "by_shards": {str(n): r for n, r in results.items()},
        "estimate": estimate,
    })


def _drive(ctx, spec, nodes, frames: Path, writers: int, seconds: float, batch: int,
           length: int) -> dict[str, Any]:
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_write_worker,
                         args=(spec, str(frames), i % spec.shards, f"bench-w{i}", seconds, start,
                               out), daemon=True)
             for i in range(writers)]
    procs.append(ctx.Process(target=_sample_worker,
                             args=(spec, batch, length, seconds, start, out), daemon=True))
    for p in procs:
        p.start()
    try:
        ready = 0
        while ready < len(procs):
            msg = out.get(timeout=120)
            ready += msg[0] == "ready"
        clients = [node.client() for node in nodes]
        before = [_node_stats(c) for c in clients]
        t0 = time.perf_counter()
        start.set()
        got: list[tuple] = []
        while len(got) < len(procs):
            got.append(out.get(timeout=seconds + 180))
        wall = time.perf_counter() - t0
        after = [_node_stats(c) for c in clients]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    writes = [g for g in got if g[0] == "writer"]
    sample = next(g for g in got if g[0] == "sampler")
    span = max(w[3] for w in writes)
    delta = [{k: a[k] - b[k] for k in a} for a, b in zip(after, before, strict=True)]
    return {
        "steps_inserted": sum(w[2] for w in writes),
        "in_bytes_total": sum(d["total_net_input_bytes"] for d in delta),
        "insert_steps_per_s": sum(w[2] for w in writes) / span,
        "sample_batches_per_s": sample[1] / sample[2] if sample[2] else 0.0,
        "sampler_first_batch_wait_s": sample[3],
        "in_bytes_per_s_per_shard": [d["total_net_input_bytes"] / wall for d in delta],
        "out_bytes_per_s_per_shard": [d["total_net_output_bytes"] / wall for d in delta],
        "redis_cpu_per_s_per_shard": [d["cpu"] / wall for d in delta],
        "wall_s": wall,
    }


def _estimate(results: dict[int, dict], step_bytes: int, actors: int, frames_per_s: float,
              target: float) -> dict[str, Any]:
    """Shards for `actors` x `frames_per_s` stored steps/s, from the measured bytes one Redis
    node takes per second of its own CPU (inserts and the sampler's reads together)."""
    per_cpu = []
    for r in results.values():
        for inb, cpu in zip(r["in_bytes_per_s_per_shard"], r["redis_cpu_per_s_per_shard"],
                            strict=True):
            if cpu > 0:
                per_cpu.append(inb / cpu)
    bytes_per_step = float(np.median([r["in_bytes_total"] / r["steps_inserted"]
                                      for r in results.values() if r["steps_inserted"]]))
    need = actors * frames_per_s * bytes_per_step
    capacity = float(np.median(per_cpu)) * target if per_cpu else float("nan")
    return {
        "actors": actors, "frames_per_s_each": frames_per_s,
        "assumption": "one stored agent step per frame, as the benchmark's writers store them",
        "raw_bytes_per_s": actors * frames_per_s * step_bytes,
        "bytes_into_redis_per_step_measured": bytes_per_step,
        "stored_bytes_per_s": need,
        "redis_bytes_in_per_cpu_second": float(np.median(per_cpu)) if per_cpu else None,
        "note": ("inserts only (with one sampler running alongside); the learners' reads add "
                 "per shard in proportion to the train ratio"),
        "target_redis_cpu_utilization": target,
        "shard_capacity_bytes_per_s": capacity,
        "shards_needed": math.ceil(need / capacity) if capacity == capacity else None,
    }
