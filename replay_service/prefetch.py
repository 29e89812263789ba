"""`Prefetcher`: a background thread that keeps sampled batches ready for the learner."""

from __future__ import annotations

import queue
import threading
from typing import Protocol

import numpy as np

from replay_service.spec import ReplaySpec, ReplayTimeout


class Sampler(Protocol):
    """What a `Prefetcher` draws from: a `ReplaySampler` (replay_service/sampler.py)."""

    spec: ReplaySpec

    def sample(self, batch_size: int, length: int, timeout: float | None = None
               ) -> dict[str, np.ndarray]: ...


class Prefetcher:
    """Samples in a background thread so batches are ready when the learner asks.

    `get(timeout)` returns the next batch, or None if none came within `timeout` (the learner can
    then check its stop flag); an error in the thread (e.g. `ReplayTimeout` after the spec's
    `wait_timeout`, unless `patient`) is raised by `get`. `close()` stops the thread within about
    `poll` seconds.
    """

    def __init__(self, sampler: Sampler, batch_size: int, length: int, depth: int = 2,
                 *, patient: bool = False, poll: float = 0.5):
        self._sampler, self._shape = sampler, (batch_size, length)
        self._ready: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._patient, self._poll = patient, poll
        self._thread = threading.Thread(target=self._work, name="replay-prefetch", daemon=True)
        self._thread.start()

    def _sample(self) -> dict[str, np.ndarray] | None:
        waited = 0.0
        while not self._stop.is_set():
            try:
                return self._sampler.sample(*self._shape, timeout=self._poll)
            except ReplayTimeout:
                waited += self._poll
                if not self._patient and waited >= self._sampler.spec.wait_timeout:
                    raise
        return None

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                item: object = self._sample()
            except Exception as err:  # noqa: BLE001 - handed to the consumer
                item = err
            if item is None:
                return
            while not self._stop.is_set():
                try:
                    self._ready.put(item, timeout=self._poll)
                    break
                except queue.Full:
                    continue
            if isinstance(item, Exception):
                return

    def get(self, timeout: float | None = None) -> dict[str, np.ndarray] | None:
        try:
            item = self._ready.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._poll * 4 + 5)
