"""The replay service on Redis: actors write chunks, learners sample sequences.

This module is the service's front door; each role lives in its own file: `spec.py` (where a
replay lives, connections, counters), `scripts.py` (the two Lua scripts), `writer.py`,
`sampler.py` (index, cache, batches), `prefetch.py` (the learner's background thread),
`workers.py` (sampler processes that fill batches in shared memory), and `check.py`
(`diswm replay check`).

    spec = ReplaySpec.from_config(cfg, port=server.port, password=server.password)
    writer = ReplayWriter(spec)                  # in each actor
    writer.add("actor3/env0/<uuid>", step)       # may wait on the rate limiter
    sampler = ReplaySampler(spec, seed=0)        # in the learner
    batch = sampler.sample(50, 50)               # dict of contiguous (B, T, ...) numpy arrays
    with sampler.prefetch(50, 50) as batches:    # a background thread keeps batches ready
        batch = next(batches)

The service logic lives in Redis itself, in two Lua scripts that run atomically: one inserts a
chunk (rate limiter check, store, commit log entry, counters, FIFO eviction down to capacity),
the other grants a sample (minimum size and rate limiter). Redis keys, for namespace NS:

    diswm:NS:meta     hash: inserts, samples, size_steps, size_bytes, raw_bytes, gseq, evicted
    diswm:NS:log      stream: one entry per stored chunk (id = gseq): stream, index, length, bytes
    diswm:NS:chunk:G  the chunk record (diswm.records), G = global insertion number
    diswm:NS:schema   the step schema every writer must match (JSON)

Chunks are immutable, so a sampler caches decoded chunks and rebuilds its index from the log
after any restart. Records that fail to decode are skipped, counted and logged, never returned.
"""

from __future__ import annotations

from replay_service.prefetch import Prefetcher
from replay_service.sampler import ReplaySampler
from replay_service.spec import ReplaySpec, ReplayTimeout, connect, read_meta
from replay_service.writer import ReplayWriter

__all__ = ["Prefetcher", "ReplaySampler", "ReplaySpec", "ReplayTimeout", "ReplayWriter",
           "connect", "read_meta"]
