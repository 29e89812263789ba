"""Versioned policy weights in Redis, as safetensors records.

    weights = WeightStore(client, "myrun")
    weights.publish(version, learner_state)          # learner, every `publish_every` updates
    if weights.version() > policy.version:           # actors poll a small integer key ...
        policy.load_weights(*weights.fetch())        # ... and fetch only when it changed

A record is the `safetensors` serialisation of the float32 state (no pickle), with the version and
a CRC-32 of every tensor's bytes in its metadata, so a fetch is always consistent and a truncated,
altered or foreign record is refused with `BadWeights` naming what is wrong. An actor that gets a
bad record keeps acting with the weights it has (actors/worker.py).
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Mapping

import numpy as np
import redis
import safetensors
import safetensors.numpy
import torch


class BadWeights(ValueError):
    """A weights record that fails its checks (truncated, altered, not a weights record)."""


def _crc(arrays: Mapping[str, np.ndarray]) -> int:
    crc = 0
    for name in sorted(arrays):
        crc = zlib.crc32(name.encode(), crc)
        crc = zlib.crc32(np.ascontiguousarray(arrays[name]).tobytes(), crc)
    return crc


def encode_weights(version: int, state: Mapping[str, torch.Tensor]) -> bytes:
    arrays = {k: v.detach().to("cpu", torch.float32).contiguous().numpy()
              for k, v in state.items()}
    meta = {"format": "diswm-weights", "version": str(int(version)), "crc32": str(_crc(arrays))}
    return safetensors.numpy.save(arrays, metadata=meta)


def decode_weights(record: bytes) -> tuple[int, dict[str, torch.Tensor]]:
    """(version, state dict); raises `BadWeights`."""
    if not isinstance(record, (bytes, bytearray)) or len(record) < 8:
        raise BadWeights("record is shorter than a safetensors header")
    (header_len,) = struct.unpack_from("<Q", record)
    if header_len > min(len(record) - 8, 1 << 24):
        raise BadWeights("record is truncated inside its header")
    try:
        meta = json.loads(bytes(record[8:8 + header_len])).get("__metadata__") or {}
        version, crc = int(meta["version"]), int(meta["crc32"])
        if meta.get("format") != "diswm-weights":
            raise ValueError(f"format {meta.get('format')!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise BadWeights(f"not a weights record ({type(err).__name__}: {err})") from None
    try:
        arrays = safetensors.numpy.load(bytes(record))
    except (safetensors.SafetensorError, ValueError) as err:
        raise BadWeights(f"unreadable safetensors payload: {err}") from None
    if _crc(arrays) != crc:
        raise BadWeights("checksum mismatch (altered record)")
    bad = [k for k, a in arrays.items() if a.dtype != np.float32 or not np.isfinite(a).all()]
    if bad:
        raise BadWeights(f"tensor {bad[0]!r} is not finite float32")
    return version, {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}


class WeightStore:
    """`name` "weights": the policy the actors act with; "teacher": the frozen teacher encoder
    they compute the stored teacher latents with (diswm/agent/teacher.py), published once."""

    def __init__(self, client: redis.Redis, namespace: str, name: str = "weights"):
        self.client = client
        self._key = f"diswm:{namespace}:{name}"
        self._version_key = f"diswm:{namespace}:{name}_version"

    def publish(self, version: int, state: Mapping[str, torch.Tensor]) -> tuple[int, float]:
        """Store `state` as `version`; returns (bytes, seconds). Refuses (`BadWeights`, nothing
        stored) a state with a NaN or inf: the published version stays the last good one."""
        start = time.perf_counter()
        for name, tensor in state.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise BadWeights(f"not publishing version {version}: tensor {name!r} is not "
                                 "finite")
        record = encode_weights(version, state)
        if isinstance(self.client, redis.RedisCluster):
            # The two keys sit in different slots of a cluster: no transaction spans them. The
            # record carries its own version, so the weights go first, then the version.
            self.client.set(self._key, record)
            self.client.set(self._version_key, int(version))
        else:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.set(self._key, record)
                pipe.set(self._version_key, int(version))
                pipe.execute()
        return len(record), time.perf_counter() - start

    def version(self) -> int:
        """The published version (-1 before the first); `BadWeights` if the key is corrupt."""
        raw = self.client.get(self._version_key)
        if raw is None:
            return -1
        try:
            return int(raw)
        except ValueError:
            raise BadWeights(f"{self._version_key} holds {raw[:40]!r}, not a version") from None

    def fetch(self) -> tuple[int, dict[str, torch.Tensor]]:
        """(version, state dict); LookupError before the first publish, BadWeights if the record
        fails its checks."""
        record = self.client.get(self._key)
        if record is None:
            raise LookupError("no weights have been published yet")
        return decode_weights(record)
