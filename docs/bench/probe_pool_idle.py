# ruff: noqa
# Probe script (fourteenth session), kept as run for the figures in README.md here on the sampler pool after
# idling (the replay service, sampler processes on 2 cores). From the repository root:
#   K=6 IDLE=0 .venv/bin/python docs/bench/probe_pool_idle.py     (also K=6 IDLE=0.5, K=50 IDLE=0)
# IDLE is the experiment's manipulation (the pool left idle before its round), not a wait.
import os, sys, time, tempfile
os.environ.setdefault("MUJOCO_GL", "egl")
from diswm.presets import load_config
from ops.bench.replay import _frames, _stream_feeder
from diswm.hostmem import reuse_freed_memory
from replay_service.client import ReplaySampler, ReplaySpec, ReplayWriter
from replay_service.server import RedisServer
from replay_service.workers import SamplerPool
K = int(os.environ.get("K", "6")); IDLE = float(os.environ.get("IDLE", "0"))
if __name__ == "__main__":
    cfg = load_config(); reuse_freed_memory()
    rec = _frames(cfg, 1000, 0)
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(tmp, persistence=cfg.replay.persistence, fsync=cfg.replay.fsync); server.start()
        spec = ReplaySpec(port=server.port, password=server.password, namespace="feas",
                          capacity=cfg.replay.capacity, chunk_length=cfg.replay.chunk_length,
                          compression="lz4", samples_per_insert=0.0, min_size=1,
                          selector="uniform", block_steps=cfg.replay.block_steps, sample_threads=1)
        w = ReplayWriter(spec); _stream_feeder(w.add, rec, 4)(6000); w.flush()
        one = ReplaySampler(spec, seed=1, cache_chunks=0)
        pool = SamplerPool(spec, 2, 50, 50, seed=3, cache_chunks=0)
        for _ in pool.batches(4): pass
        for rnd in range(6):
            t = time.perf_counter(); [one.sample(50, 50) for _ in range(K)]; r1 = K / (time.perf_counter() - t)
            time.sleep(IDLE)  # the pool idle for a while, as while other cases run
            t = time.perf_counter(); [None for _ in pool.batches(K)]; rp = K / (time.perf_counter() - t)
            print(f"K={K} idle={IDLE} round {rnd}: one process {r1:.1f}/s, 2 sampler processes {rp:.1f}/s ({rp / r1:.2f}x)", flush=True)
        pool.close(); server.stop()
