"""Where a replay lives and how to reach it: `ReplaySpec` (plain data, safe to ship to actors),
the client connection, the counters (`read_meta`), and the limiter's polling with a deadline."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from diswm import rediskit


class ReplayTimeout(TimeoutError):
    """A blocked insert or sample waited longer than `wait_timeout`."""


@dataclass(frozen=True)
class ReplaySpec:
    """Everything a writer or sampler needs to reach one replay (plain data, safe to ship)."""

    host: str = "127.0.0.1"
    port: int = 6379
    password: str = ""
    namespace: str = "default"
    capacity: int = 1_000_000  # agent steps
    chunk_length: int = 64
    compression: str = "lz4"
    samples_per_insert: float = 0.0  # 0 disables the limiter
    min_size: int = 1  # steps stored before sampling starts
    tolerance: float = 1000.0  # agent steps either side of the target ratio
    wait_timeout: float = 120.0
    selector: str = "uniform"
    outage_window: float = 120.0  # seconds clients retry while Redis is unreachable

    @classmethod
    def from_config(cls, cfg, *, host: str | None = None, port: int, password: str) -> ReplaySpec:
        r = cfg.replay
        return cls(host=host or r.host, port=port, password=password, namespace=r.namespace,
                   capacity=r.capacity, chunk_length=r.chunk_length, compression=r.compression,
                   samples_per_insert=cfg.samples_per_insert if r.rate_limit else 0.0,
                   min_size=max(cfg.train.prefill, cfg.train.batch_length, 1),
                   tolerance=float(r.tolerance), wait_timeout=r.wait_timeout,
                   selector=r.selector, outage_window=r.outage_window)

    @property
    def prefix(self) -> str:
        return f"diswm:{self.namespace}:"

    @property
    def limits(self) -> tuple[float, float]:
        """(min_diff, max_diff) of diff = inserts * spi - samples, as in Reverb."""
        offset = self.samples_per_insert * self.min_size
        slack = self.samples_per_insert * self.tolerance
        return offset - slack, offset + slack


def connect(spec: ReplaySpec) -> redis.Redis:
    """A client that retries through short outages (e.g. a Redis restart)."""
    return rediskit.connect(spec.host, spec.port, spec.password, spec.outage_window)


class _Backoff:
    """Polling with a growing interval and a deadline (the limiter's waits)."""

    def __init__(self, timeout: float):
        self.start = time.monotonic()
        self.deadline = self.start + timeout
        self.delay = 0.0005

    def wait_or_raise(self, what: str) -> None:
        if time.monotonic() > self.deadline:
            raise ReplayTimeout(what)
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, 0.05)

    @property
    def waited(self) -> float:
        return time.monotonic() - self.start


def read_meta(client: redis.Redis, spec: ReplaySpec) -> dict[str, int]:
    raw = client.hgetall(spec.prefix + "meta")
    keys = ("inserts", "samples", "size_steps", "size_bytes", "raw_bytes", "gseq", "evicted")
    return {k: int(raw.get(k.encode(), 0)) for k in keys}
