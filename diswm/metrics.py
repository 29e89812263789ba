"""Prometheus metrics, all named here (DESIGN.md section 3): names start with `diswm_`, use base
units, counters end in `_total`, labels have bounded cardinality (namespace = one per run)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0)
_FETCH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

# -- replay -------------------------------------------------------------------------------------
REPLAY_INSERTED_STEPS = Counter(
    "diswm_replay_inserted_steps_total", "Agent steps inserted into the replay", ["namespace"])
REPLAY_INSERTED_CHUNKS = Counter(
    "diswm_replay_inserted_chunks_total", "Chunks inserted into the replay", ["namespace"])
REPLAY_INSERTED_BYTES = Counter(
    "diswm_replay_inserted_bytes_total", "Compressed bytes inserted into the replay",
    ["namespace"])
REPLAY_SAMPLED_SEQUENCES = Counter(
    "diswm_replay_sampled_sequences_total", "Sequences sampled from the replay", ["namespace"])
REPLAY_SIZE_STEPS = Gauge(
    "diswm_replay_size_steps", "Agent steps stored in the replay", ["namespace"])
REPLAY_SIZE_BYTES = Gauge(
    "diswm_replay_size_bytes", "Compressed bytes stored in the replay", ["namespace"])
REPLAY_COMPRESSION_RATIO = Gauge(
    "diswm_replay_compression_ratio", "Raw bytes / stored bytes of the replay's contents",
    ["namespace"])
REPLAY_INSERT_WAIT = Histogram(
    "diswm_replay_insert_wait_seconds", "Time an insert waited on the rate limiter",
    ["namespace"], buckets=_WAIT_BUCKETS)
REPLAY_SAMPLE_WAIT = Histogram(
    "diswm_replay_sample_wait_seconds",
    "Time a sample waited on the rate limiter or the minimum size", ["namespace"],
    buckets=_WAIT_BUCKETS)
REPLAY_SAMPLE_DURATION = Histogram(
    "diswm_replay_sample_duration_seconds", "Time to fetch, decode and assemble one batch",
    ["namespace"], buckets=_FETCH_BUCKETS)
REPLAY_CORRUPT_RECORDS = Counter(
    "diswm_replay_corrupt_records_total",
    "Stored records skipped because they failed to decode or check", ["namespace"])
REPLAY_REJECTED_STEPS = Counter(
    "diswm_replay_rejected_steps_total", "Steps refused at insert for a bad field or schema",
    ["namespace"])
