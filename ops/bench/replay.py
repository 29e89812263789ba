"""`diswm bench replay`: the Redis replay service against an in-process numpy buffer.

Both hold the same steps (real distracted cheetah frames with all the fields an actor writes) and
are driven round-robin in one run. Keys: ``insert_ratio_vs_inprocess`` (Redis steps/s over
in-process steps/s) and ``sample_ratio_vs_inprocess`` (B x T batches/s, likewise) with the
sampler's cache off (every batch fetches and decodes what it uses: the service's worst case, and
what uniform sampling from a large replay sees), ``sample_ratio_vs_inprocess_cached`` at the
cache a learner uses (256 chunks; this benchmark's replay fits in it),
``sample_ratio_vs_inprocess_workers`` with the cache off in ``replay.sample_workers`` sampler
processes (replay_service/workers.py; 0 there: ``default_workers()``), for the configured
compression and block size; for comparison, the other codecs and whole-chunk records
(``replay.block_steps=0``, the sample path before block records) in the same run. The rate
limiter is off: this measures throughput, not the train ratio. Host memory is as in a learner's
process (`train.reuse_host_memory`, diswm/hostmem.py: freed memory kept for reuse, so a batch's
arrays are not page-faulted afresh), for the baseline and the Redis path alike.

``--shards 1 2 3`` runs replay_service's sharding benchmark instead (ops/bench/replay_shards.py).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from diswm.config import Config
from diswm.envs import make_env
from diswm.hostmem import reuse_freed_memory
from ops.bench.common import interleaved_rates, write_report
from replay_service.buffer import SequenceBuffer
from replay_service.client import ReplaySampler, ReplaySpec, ReplayWriter
from replay_service.server import RedisServer
from replay_service.workers import SamplerPool, default_workers

CODECS = ("lz4", "zstd", "none")


def _frames(cfg: Config, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """`n` real steps from the configured task, as an actor would write them."""
    rng = np.random.default_rng(seed)
    steps = []
    with make_env(cfg.env, cfg.distraction, seed=seed) as env:
        obs = env.reset()
        action = np.zeros(env.act_space.shape, np.float32)
        while len(steps) < n:
            steps.append({**obs, "action": action, "policy_version": np.int64(0)})
            if obs["is_last"]:
                obs, action = env.reset(), np.zeros(env.act_space.shape, np.float32)
            else:
                action = rng.uniform(-1, 1, env.act_space.shape).astype(np.float32)
                obs = env.step(action)
    return steps


def _stream_feeder(add: Callable[[str, dict], Any], steps: list[dict], streams: int
                   ) -> Callable[[int], int]:
    """Feeds `n` steps per call, cycling the recorded steps over `streams` streams."""
    cursor = {"i": 0}
    episode = max(i for i, s in enumerate(steps) if s["is_last"]) + 1 if any(
        s["is_last"] for s in steps) else len(steps)

    def run(n: int) -> int:
        for _ in range(n):
            i = cursor["i"]
            stream = (i // episode) % streams
            add(f"bench{stream}", steps[i % episode])
            cursor["i"] = i + 1
        return n

    return run


def bench_replay(cfg: Config, *, steps: int = 6000, batches: int = 6, rounds: int = 5,
                 streams: int = 4, codecs: tuple[str, ...] | None = None, json_path=None,
                 progress=print) -> dict[str, Any]:
    batch_size, length = cfg.train.batch_size, cfg.train.batch_length
    if cfg.train.reuse_host_memory:  # as in the learner's process, where the sampler runs
        reuse_freed_memory()
    codecs = codecs or (cfg.replay.compression,) + tuple(
        c for c in CODECS if c != cfg.replay.compression)
    progress(f"recording {min(steps, 1000)} real steps of {cfg.env.task} ...")
    recorded = _frames(cfg, min(steps, 1000), cfg.train.seed)
    step_bytes = sum(np.asarray(v).nbytes for v in recorded[0].values())
    per_round = steps // rounds
    workers = cfg.replay.sample_workers or default_workers()
    pool = None
    with tempfile.TemporaryDirectory(prefix="diswm-bench-redis-") as tmp:
        server = RedisServer(tmp, persistence=cfg.replay.persistence, fsync=cfg.replay.fsync)
        server.start()
        try:
            inproc = SequenceBuffer(cfg.replay.capacity, seed=0,
                                    chunk_length=cfg.replay.chunk_length)
            def spec(codec: str, block_steps: int) -> ReplaySpec:
                return ReplaySpec(port=server.port, password=server.password,
                                  namespace=f"bench-{codec}-{uuid.uuid4().hex[:6]}",
                                  capacity=cfg.replay.capacity,
                                  chunk_length=cfg.replay.chunk_length, compression=codec,
                                  samples_per_insert=0.0, min_size=1, selector="uniform",
                                  block_steps=block_steps,
                                  sample_threads=cfg.replay.sample_threads)

            specs = {c: spec(c, cfg.replay.block_steps) for c in codecs}
            whole = f"{codecs[0]}_whole_chunks"
            if cfg.replay.block_steps:
                specs[whole] = spec(codecs[0], 0)
            writers = {c: ReplayWriter(s) for c, s in specs.items()}
            insert_cases = {"inprocess": _stream_feeder(inproc.add, recorded, streams)}
            insert_cases |= {f"redis_{c}": _stream_feeder(w.add, recorded, streams)
                             for c, w in writers.items()}
            progress(f"inserting {per_round * rounds} steps into each store ...")
            insert = interleaved_rates(insert_cases, per_round, rounds, progress)
            for w in writers.values():
                w.flush()
            inproc.flush()

            # No decoded-chunk cache: at scale (1M steps) uniform sampling almost never hits
            # it, so every batch here fetches and decodes all of its chunks from Redis.
            samplers = {c: ReplaySampler(s, seed=1, cache_chunks=0) for c, s in specs.items()}
            # Sampler processes (replay.sample_workers), cache off too; each round asks them
            # for exactly its batches, so no round starts with batches made ahead.
            pool = SamplerPool(specs[codecs[0]], workers, batch_size, length, seed=3,
                               cache_chunks=0)
            cached = ReplaySampler(specs[codecs[0]], seed=2)  # the learner's cache (256 chunks)
            for _ in range(20):  # fill it: this replay fits (a batch decodes what it uses)
                cached.sample(batch_size, length)

            def sampler_case(sample: Callable[[int, int], dict]) -> Callable[[int], int]:
                def run(n: int) -> int:
                    for _ in range(n):
                        sample(batch_size, length)
                    return n
                return run

            sample_cases = {"inprocess": sampler_case(inproc.sample)}
            sample_cases |= {f"redis_{c}": sampler_case(s.sample) for c, s in samplers.items()}
            sample_cases[f"redis_{codecs[0]}_cached"] = sampler_case(cached.sample)

            def pool_case(n: int) -> int:
                for _ in pool.batches(n):
                    pass
                return n

            sample_cases[f"redis_{codecs[0]}_workers"] = pool_case
            progress(f"sampling {batch_size}x{length} batches ...")
            sample = interleaved_rates(sample_cases, batches, rounds, progress)

            # Prefetch: what a GPU learner waits per batch when each update takes as long as
            # one Redis sample (the background thread overlaps the two).
            main = samplers[codecs[0]]
            fetch_s = 1.0 / sample[f"redis_{codecs[0]}"]["median"]
            waits = []
            with main.prefetch(batch_size, length, depth=cfg.replay.prefetch or 1) as it:
                next(it)
                for _ in range(batches):
                    _gpu_update_stand_in(fetch_s)
                    start = time.perf_counter()
                    next(it)
                    waits.append(time.perf_counter() - start)
            stats = {c: s.stats() for c, s in samplers.items()}
            pool_stats = pool.stats()
        finally:
            if pool is not None:
                pool.close()
            server.stop()
    primary = f"redis_{codecs[0]}"
    batch_mb = batch_size * length * step_bytes / 1e6
    return write_report(json_path, {
        "bench": "replay",
        "task": cfg.env.task,
        "compression": codecs[0],
        "chunk_length": cfg.replay.chunk_length,
        "block_steps": cfg.replay.block_steps,
        "sample_threads": cached._builder.threads,
        "sample_workers": workers,
        "sample_worker_restarts": pool_stats["restarts"],
        "persistence": cfg.replay.persistence,
        "host_memory": "reuse" if cfg.train.reuse_host_memory else "system",
        "batch": [batch_size, length],
        "streams": streams,
        "raw_bytes_per_step": step_bytes,
        "baseline": "inprocess (replay_service.buffer.SequenceBuffer, numpy, same data)",
        "insert_steps_per_s": insert,
        "sample_batches_per_s": sample,
        "sample_mb_per_s": {k: v["median"] * batch_mb for k, v in sample.items()},
        "sample_batch_seconds": {k: 1.0 / v["median"] for k, v in sample.items()},
        "prefetch_wait_seconds_median": float(np.median(waits)),
        "prefetch_wait_vs_fetch": float(np.median(waits)) / fetch_s,
        "compression_ratio": {c: s["compression_ratio"] for c, s in stats.items()},
        "stored_bytes_per_step": {c: s["size_bytes"] / max(s["size_steps"], 1)
                                  for c, s in stats.items()},
        "insert_ratio_vs_inprocess": insert[primary]["median"] / insert["inprocess"]["median"],
        "sample_ratio_vs_inprocess": sample[primary]["median"] / sample["inprocess"]["median"],
        "sample_ratio_vs_inprocess_cached": (sample[f"{primary}_cached"]["median"]
                                             / sample["inprocess"]["median"]),
        "sample_ratio_vs_inprocess_workers": (sample[f"{primary}_workers"]["median"]
                                              / sample["inprocess"]["median"]),
        "sample_ratio_whole_chunk_records": (
            sample[f"redis_{whole}"]["median"] / sample["inprocess"]["median"]
            if f"redis_{whole}" in sample else None),
    })


def _gpu_update_stand_in(seconds: float) -> None:
    """A GPU learner's update as the host sees it: the CPU waits on the device, the GIL free."""
    time.sleep(seconds)
