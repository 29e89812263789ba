"""The run's control plane in Redis: versioned policy weights and shared run state.

    weights = WeightStore(client, "myrun")
    weights.publish(version, learner_state)          # learner, every `publish_every` updates
    if weights.version() > policy.version:           # actors poll a small integer key ...
        policy.load_weights(*weights.fetch())        # ... and fetch only when it changed

    control = RunControl(client, "myrun")
    control.add(env_steps=2, agent_steps=1)          # actors count globally
    control.set("scheme", "B")                       # the learner switches every env at once

Weights travel as a `diswm.records` record (raw float32 arrays with a JSON header, no pickle),
with their version inside the same record so a fetch is always consistent.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
import redis
import torch

from diswm.records import decode, encode

_VERSION_FIELD = "__version__"


class WeightStore:
    def __init__(self, client: redis.Redis, namespace: str):
        self.client = client
        self._key = f"diswm:{namespace}:weights"
        self._version_key = f"diswm:{namespace}:weights_version"

    def publish(self, version: int, state: Mapping[str, torch.Tensor]) -> tuple[int, float]:
        """Store `state` as `version`; returns (bytes, seconds)."""
        start = time.perf_counter()
        arrays = {k: v.detach().to("cpu", torch.float32).numpy() for k, v in state.items()}
        arrays[_VERSION_FIELD] = np.asarray(version, np.int64)
        record = encode(arrays, "none")  # float weights barely compress; raw is fastest
        with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self._key, record)
            pipe.set(self._version_key, int(version))
            pipe.execute()
        return len(record), time.perf_counter() - start

    def version(self) -> int:
        raw = self.client.get(self._version_key)
        return int(raw) if raw is not None else -1

    def fetch(self) -> tuple[int, dict[str, torch.Tensor]]:
        """(version, state dict); raises LookupError before the first publish."""
        record = self.client.get(self._key)
        if record is None:
            raise LookupError("no weights have been published yet")
        arrays = decode(record)
        version = int(arrays.pop(_VERSION_FIELD))
        return version, {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}


class RunControl:
    """A Redis hash of the run's shared state: counters, colour scheme, stop flag."""

    COUNTERS = ("env_steps", "agent_steps", "episodes", "actor_restarts", "learner_restarts")

    def __init__(self, client: redis.Redis, namespace: str):
        self.client = client
        self._key = f"diswm:{namespace}:control"

    def add(self, **counts: int) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            for name, value in counts.items():
                if value:
                    pipe.hincrby(self._key, name, int(value))
            pipe.execute()

    def counters(self) -> dict[str, int]:
        raw = self.client.hmget(self._key, list(self.COUNTERS))
        return {k: int(v) if v is not None else 0 for k, v in zip(self.COUNTERS, raw, strict=True)}

    def get(self, field: str, default: str = "") -> str:
        raw = self.client.hget(self._key, field)
        return raw.decode() if raw is not None else default

    def set(self, field: str, value: str) -> None:
        self.client.hset(self._key, field, value)

    def snapshot(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.client.hgetall(self._key).items()}
