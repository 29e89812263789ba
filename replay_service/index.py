"""Which sequences exist, and how to pick them: chunk metadata and pluggable selectors.

The index knows every stored chunk by its global insertion number (``gseq``), its stream and its
position in the stream, so a sequence can continue into the stream's next chunk. Storage (a dict
in-process, Redis in the service) is someone else's business.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

Segment = tuple[int, int, int]  # (gseq, offset, count)


@dataclass(frozen=True)
class ChunkInfo:
    gseq: int
    stream: str
    index: int
    length: int


class Uniform:
    """Every stored step is equally likely to start a sequence."""

    def weights(self, lengths_N: np.ndarray) -> np.ndarray:
        return lengths_N.astype(np.float64)


class Recency:
    """Newer chunks are preferred: weight = length * exp(-age / half_life_chunks * ln 2)."""

    def __init__(self, half_life_chunks: float = 1000.0):
        self.half_life = float(half_life_chunks)

    def weights(self, lengths_N: np.ndarray) -> np.ndarray:
        age = np.arange(len(lengths_N))[::-1]
        return lengths_N * np.exp2(-age / self.half_life)


class SequenceIndex:
    def __init__(self, selector=None):
        self.selector = selector or Uniform()
        self._chunks: dict[int, ChunkInfo] = {}  # insertion order == gseq order
        self._by_pos: dict[tuple[str, int], int] = {}
        self._dirty = True
        self._gseqs_N = np.zeros(0, np.int64)
        self._cum_N = np.zeros(0, np.float64)
        self.steps = 0

    def __len__(self) -> int:
        return len(self._chunks)

    def __contains__(self, gseq: int) -> bool:
        return gseq in self._chunks

    def add(self, info: ChunkInfo) -> None:
        if info.gseq in self._chunks:
            return
        self._chunks[info.gseq] = info
        self._by_pos[(info.stream, info.index)] = info.gseq
        self.steps += info.length
        self._dirty = True

    def remove(self, gseq: int) -> ChunkInfo | None:
        info = self._chunks.pop(gseq, None)
        if info is not None:
            self._by_pos.pop((info.stream, info.index), None)
            self.steps -= info.length
            self._dirty = True
        return info

    def info(self, gseq: int) -> ChunkInfo | None:
        return self._chunks.get(gseq)

    def oldest(self) -> ChunkInfo | None:
        return next(iter(self._chunks.values()), None)

    def evict_upto(self, gseq: int) -> list[ChunkInfo]:
        """Drop every chunk with a global number <= gseq (FIFO eviction)."""
        gone = []
        while self._chunks:
            first = next(iter(self._chunks))
            if first > gseq:
                break
            gone.append(self.remove(first))
        return gone

    def sample(self, rng: np.random.Generator, n: int, length: int,
               max_tries: int = 64) -> list[list[Segment]]:
        """`n` sequences of `length` steps, each a list of (gseq, offset, count) segments."""
        if self._dirty:
            self._gseqs_N = np.fromiter(self._chunks, np.int64, len(self._chunks))
            lengths = np.fromiter((c.length for c in self._chunks.values()), np.int64,
                                  len(self._chunks))
            self._cum_N = np.cumsum(self.selector.weights(lengths))
            self._dirty = False
        if not len(self._cum_N) or self._cum_N[-1] <= 0:
            raise LookupError("the replay holds no data yet")
        out: list[list[Segment]] = []
        tries = 0
        while len(out) < n:
            tries += 1
            if tries > max_tries * n:
                raise LookupError(f"no sequence of {length} steps is available yet "
                                  f"({self.steps} steps stored in {len(self)} chunks)")
            pos = rng.uniform(0.0, self._cum_N[-1])
            i = int(np.searchsorted(self._cum_N, pos, side="right"))
            info = self._chunks[int(self._gseqs_N[min(i, len(self._gseqs_N) - 1)])]
            segments = self._continue(info, int(rng.integers(info.length)), length)
            if segments is not None:
                out.append(segments)
        return out

    def _continue(self, info: ChunkInfo, offset: int, length: int) -> list[Segment] | None:
        segments, need = [], length
        while True:
            take = min(info.length - offset, need)
            segments.append((info.gseq, offset, take))
            need -= take
            if need == 0:
                return segments
            nxt = self._by_pos.get((info.stream, info.index + 1))
            if nxt is None:
                return None  # the stream's next chunk is not stored (yet)
            info, offset = self._chunks[nxt], 0


def assemble(sequences: list[list[Segment]], chunks: Mapping[int, Mapping[str, np.ndarray]],
             length: int, schema: Mapping[str, tuple[str, tuple[int, ...]]],
             out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Copy the segments' steps into contiguous (B, T, ...) arrays."""
    batch = len(sequences)
    if out is None:
        out = {k: np.empty((batch, length, *shape), dtype) for k, (dtype, shape) in schema.items()}
    for b, segments in enumerate(sequences):
        t = 0
        for gseq, offset, count in segments:
            chunk = chunks[gseq]
            for key, array in out.items():
                array[b, t:t + count] = chunk[key][offset:offset + count]
            t += count
    return out


SelectorFactory = Callable[[], object]
SELECTORS: dict[str, SelectorFactory] = {"uniform": Uniform, "recency": Recency}
