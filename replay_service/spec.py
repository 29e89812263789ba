"""Where a replay lives and how to reach it: `ReplaySpec` (plain data, safe to ship to actors),
the client connection (one Redis, or a Redis Cluster for a sharded replay), the counters
(`read_meta`), and the limiter's polling with a deadline."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from diswm import rediskit
from replay_service.redis_cluster import shard_tag


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
    # sequences the learner's initial updates sample (`train.pretrain_updates` batches) that the
    # ratio does not charge: DreamerV2 trains them once the prefill is stored and then one update
    # per `train_every` agent steps, so they are not owed by later inserts
    initial_samples: float = 0.0
    wait_timeout: float = 120.0
    selector: str = "uniform"
    outage_window: float = 120.0  # seconds clients retry while Redis is unreachable
    # > 1: the replay is sharded over a Redis Cluster reached through host:port (and any of
    # `cluster_nodes`, "host:port" strings, should that one be down); see replay_service/redis_cluster.py
    shards: int = 1
    cluster_nodes: tuple[str, ...] = ()
    block_steps: int = 8  # steps per compressed image block (0: whole-chunk records)
    sample_threads: int = 0  # threads that decode a batch (0: half the CPUs, 1 to 4)

    @classmethod
    def from_config(cls, cfg, *, host: str | None = None, port: int, password: str) -> ReplaySpec:
        r = cfg.replay
        return cls(host=host or r.host, port=port, password=password, namespace=r.namespace,
                   capacity=r.capacity, chunk_length=r.chunk_length, compression=r.compression,
                   samples_per_insert=cfg.samples_per_insert if r.rate_limit else 0.0,
                   min_size=max(cfg.train.prefill, cfg.train.batch_length, 1),
                   tolerance=float(r.tolerance),
                   initial_samples=float(cfg.train.pretrain_updates * cfg.train.batch_size)
                   if r.rate_limit else 0.0,
                   wait_timeout=r.wait_timeout,
                   selector=r.selector, outage_window=r.outage_window,
                   shards=r.shards, block_steps=r.block_steps,
                   sample_threads=r.sample_threads)

    @property
    def prefix(self) -> str:
        return f"diswm:{self.namespace}:"

    @property
    def limits(self) -> tuple[float, float]:
        """(min_diff, max_diff) of diff = inserts * spi - charged samples, as in Reverb (charged:
        the samples past `initial_samples`, which the scripts do not count); per shard when
        sharded (each shard's limiter holds its 1/shards of the minimum size and the slack, so
        the shards' bands add up to the global one)."""
        offset = self.samples_per_insert * self.min_size / self.shards
        slack = self.samples_per_insert * self.tolerance / self.shards
        return offset - slack, offset + slack

    @property
    def shard_initial_samples(self) -> float:
        """Each shard's share of `initial_samples`."""
        return self.initial_samples / self.shards

    @property
    def shard_min_size(self) -> int:
        """Steps a shard holds before it is sampled (its share of `min_size`)."""
        return -(-self.min_size // self.shards)

    def shard_prefix(self, k: int) -> str:
        """Shard k's key prefix: ``diswm:NS:`` unsharded, ``diswm:NS:{TAG}:`` on a cluster."""
        if self.shards == 1:
            return self.prefix
        return f"{self.prefix}{{{shard_tag(k, self.shards)}}}:"

    @property
    def shard_prefixes(self) -> list[str]:
        return [self.shard_prefix(k) for k in range(self.shards)]


class _PatientCluster(RedisCluster):
    """A cluster client whose commands wait (with backoff) through a node's outage for up to
    `outage_window` seconds, as `rediskit.connect`'s client does for one Redis: a restarted
    node refuses connections, then answers CLUSTERDOWN until it has rejoined."""

    outage_window = 120.0

    def execute_command(self, *args, **kwargs):
        deadline, delay = time.monotonic() + self.outage_window, 0.05
        while True:
            try:
                return super().execute_command(*args, **kwargs)
            except redis.AuthenticationError:
                raise
            except (redis.ConnectionError, redis.TimeoutError,
                    redis.exceptions.ClusterDownError):
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)  # the node is down or rejoining: wait for it, with a deadline
                delay = min(delay * 2, 1.0)


def connect(spec: ReplaySpec, *, fail_fast: bool = False) -> redis.Redis | RedisCluster:
    """A client that retries through short outages (e.g. a Redis restart). For a sharded replay
    a Redis Cluster client that waits through a node's outage the same way, or with
    `fail_fast` one whose commands to a node that is down fail at once (the sampler's data
    path, which leaves that shard out)."""
    if spec.shards == 1:
        return rediskit.connect(spec.host, spec.port, spec.password, spec.outage_window)
    nodes = [ClusterNode(spec.host, spec.port)]
    for address in spec.cluster_nodes:
        host, _, port = address.rpartition(":")
        nodes.append(ClusterNode(host, int(port)))
    backoff = _Backoff(spec.outage_window)
    while True:
        try:
            client = (RedisCluster if fail_fast else _PatientCluster)(
                startup_nodes=nodes, password=spec.password or None, socket_timeout=60,
                socket_connect_timeout=2, retry=Retry(NoBackoff(), 0 if fail_fast else 1),
                dynamic_startup_nodes=False, require_full_coverage=False)
            client.outage_window = spec.outage_window
            return client
        except redis.AuthenticationError:
            raise
        except (redis.ConnectionError, redis.exceptions.RedisClusterException) as err:
            if "cluster mode is not enabled" in str(err).lower():
                raise ValueError(
                    f"replay.shards={spec.shards} needs a Redis Cluster, and the Redis at "
                    f"{spec.host}:{spec.port} is a single server (cluster mode is not enabled): "
                    "set replay.shards=1, or point replay.host/port at a cluster node") from None
            if time.monotonic() > backoff.deadline:
                raise redis.ConnectionError(
                    f"no node of the Redis cluster at {spec.host}:{spec.port} answered within "
                    f"{spec.outage_window:g} s: {err}") from None
            time.sleep(min(backoff.delay, 1.0))  # retrying a cluster that is down, with a deadline
            backoff.delay = min(backoff.delay * 2, 1.0)


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


META_FIELDS = ("inserts", "samples", "size_steps", "size_bytes", "raw_bytes", "gseq", "evicted")


def read_meta(client: redis.Redis, spec: ReplaySpec, shard: int | None = None) -> dict[str, int]:
    """The replay's counters: shard `shard`'s, or (None) the sum over all shards."""
    shards = range(spec.shards) if shard is None else [shard]
    total = dict.fromkeys(META_FIELDS, 0)
    for k in shards:
        raw = client.hgetall(spec.shard_prefix(k) + "meta")
        for name in META_FIELDS:
            total[name] += int(raw.get(name.encode(), 0))
    return total
