"""Steps -> chunks: the write path's unit of storage (one actor env stream, one episode).

A stream is one env of one actor incarnation. Its steps are cut into chunks of at most
`chunk_length` steps; a chunk also ends at the end of an episode, so every chunk belongs to one
episode, and consecutive chunks of a stream link up into sequences that may span chunk (and,
marked by ``is_first``, episode) boundaries.

A step is the env's observation dict plus ``action`` (the action that led to this observation,
zeros on ``is_first``, DreamerV2's convention) and ``policy_version``; ``discount`` is added as
``1 - is_terminal`` when missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

REQUIRED_FIELDS = ("image", "action", "reward", "is_first", "is_last", "is_terminal",
                   "policy_version")

Schema = dict[str, tuple[str, tuple[int, ...]]]


@dataclass(frozen=True)
class Chunk:
    stream: str
    index: int  # position of this chunk in its stream: 0, 1, 2, ...
    data: dict[str, np.ndarray]  # each (length, ...)

    @property
    def length(self) -> int:
        return int(self.data["reward"].shape[0])


def step_schema(step: Mapping[str, np.ndarray]) -> Schema:
    return {k: (np.asarray(v).dtype.name, tuple(np.shape(v))) for k, v in sorted(step.items())}


def normalise_step(step: Mapping[str, object]) -> dict[str, np.ndarray]:
    """Check the required fields and add ``discount``; raises ValueError naming a bad field."""
    missing = [k for k in REQUIRED_FIELDS if k not in step]
    if missing:
        raise ValueError(f"replay step is missing field(s) {', '.join(missing)}; "
                         f"required: {', '.join(REQUIRED_FIELDS)}")
    out = {k: np.asarray(v) for k, v in step.items()}
    for flag in ("is_first", "is_last", "is_terminal"):
        out[flag] = out[flag].astype(bool)
    out["reward"] = out["reward"].astype(np.float32)
    out["action"] = out["action"].astype(np.float32)
    out["policy_version"] = out["policy_version"].astype(np.int64)
    if "discount" not in out:
        out["discount"] = np.float32(1.0 - float(out["is_terminal"]))
    if out["image"].dtype != np.uint8:
        raise ValueError(f"replay step field 'image' must be uint8, got {out['image'].dtype}")
    for key, value in out.items():
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise ValueError(f"replay step field {key!r} has non-finite values")
    return out


class ChunkBuilder:
    """Accumulates one stream's steps and emits closed chunks."""

    def __init__(self, stream: str, chunk_length: int):
        if chunk_length < 1:
            raise ValueError(f"chunk_length must be >= 1, got {chunk_length}")
        self.stream = stream
        self.chunk_length = chunk_length
        self.schema: Schema | None = None
        self._buffers: dict[str, np.ndarray] = {}
        self._count = 0
        self._next_index = 0
        self._started = False

    @property
    def pending(self) -> int:
        """Steps held in the open chunk (not yet stored)."""
        return self._count

    def add(self, step: Mapping[str, object]) -> list[Chunk]:
        """Add one step; returns the chunks this closed (usually none, at most two)."""
        step = normalise_step(step)
        schema = step_schema(step)
        if self.schema is None:
            self.schema = schema
        elif schema != self.schema:
            raise ValueError(f"stream {self.stream!r}: " + describe_schema_change(self.schema,
                                                                                  schema))
        if not self._started and not step["is_first"]:
            raise ValueError(f"stream {self.stream!r}: the first step must have is_first=True")
        self._started = True
        closed = []
        if step["is_first"] and self._count:
            closed.append(self._close())  # the previous episode ended without is_last
        if not self._buffers:
            self._buffers = {k: np.empty((self.chunk_length, *v.shape), v.dtype)
                             for k, v in step.items()}
        for key, value in step.items():
            self._buffers[key][self._count] = value
        self._count += 1
        if step["is_last"] or self._count == self.chunk_length:
            closed.append(self._close())
        return closed

    def flush(self) -> Chunk | None:
        """Close the open chunk early (e.g. on shutdown); None if it is empty."""
        return self._close() if self._count else None

    def _close(self) -> Chunk:
        data = {k: v[:self._count].copy() for k, v in self._buffers.items()}
        chunk = Chunk(self.stream, self._next_index, data)
        self._next_index += 1
        self._count = 0
        return chunk


def check_finite(chunk: Chunk) -> None:
    """Raise ValueError naming the first float field of `chunk` with a NaN or inf: every insert
    path refuses them (one non-finite reward makes every later loss and gradient NaN)."""
    for key in sorted(chunk.data):
        value = chunk.data[key]
        if value.dtype.kind in "fc":
            bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            if bad:
                raise ValueError(f"stream {chunk.stream!r}, chunk {chunk.index}: field {key!r} "
                                 f"has {bad} non-finite value(s); the chunk is not stored")


def describe_schema_change(expected: Schema, got: Schema) -> str:
    for key in sorted(set(expected) | set(got)):
        if key not in got:
            return f"step lacks field {key!r}"
        if key not in expected:
            return f"step has unexpected field {key!r}"
        if expected[key] != got[key]:
            return (f"field {key!r} is {got[key][0]}{list(got[key][1])}, "
                    f"expected {expected[key][0]}{list(expected[key][1])}")
    return "schema differs"
