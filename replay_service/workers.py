"""`SamplerPool`: sampler processes that fill batches in shared memory.

Reverb samples with several worker threads in C++; in Python the per-block work of a batch
(the fetch's reply parsing, ~10 µs of Python per decoded block, the copies) holds the GIL, so
decode threads stop scaling after two (docs/bench/README.md, "Replay"). A pool of processes does
not share a GIL: each worker runs its own `ReplaySampler` (own connection, index and grant from
the rate limiter, so the limiter's accounting is exactly as with one sampler) and fills whole
batches straight into shared-memory slots, which the caller receives as numpy views.

    pool = SamplerPool(spec, workers=4, batch_size=50, length=50, seed=0)
    batch = pool.sample()              # the next ready batch (views into shared memory)
    batch = pool.get(timeout=0.5)      # or None if none came within the timeout
    pool.close()

What crosses between the processes: JSON requests and replies on a pipe (multiprocessing's
start pickles only the pool's own pipe, stop event and the spec as a JSON string) and the batch's raw bytes in a shared-memory file (`/dev/shm`, mode 0600, created
exclusively, named after the pool's process id; the pool removes them on close, and a pool's
start removes any left by a pool whose process is gone). A slot is filled again only once
nothing holds the arrays handed out from it (the caller's dict, a view, a tensor made from
them). A worker that dies is started again and its batch asked for anew (counted in
`restarts`, logged); batches already handed out stay valid.

Workers prefetch: up to `depth` requests are queued per worker, so a worker takes grants from
the rate limiter up to `depth` batches ahead of the caller (the `Prefetcher` thread takes
`depth` too).
"""

from __future__ import annotations

import json
import logging
import mmap
import multiprocessing as mp
import os
import secrets
import signal
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict
from multiprocessing.connection import wait as wait_any
from pathlib import Path

import numpy as np

from diswm import metrics
from replay_service.chunks import Schema
from replay_service.sampler import ReplaySampler, unheld
from replay_service.spec import ReplaySpec, ReplayTimeout

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
_PREFIX = "diswm-replay-"
_ALIGN = 64
_POLL = 1.0  # seconds: how often a waiting worker looks at the stop flag


def default_workers() -> int:
    """For benchmarks: one sampler process per CPU, 2 to 4."""
    return max(2, min(4, os.cpu_count() or 1))


def _shm_dir() -> Path:
    return SHM_DIR if SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK) else Path(
        os.environ.get("TMPDIR", "/tmp"))


def _layout(batch_size: int, length: int, schema: Schema) -> tuple[list, int]:
    """[(field, dtype, shape, offset)], total bytes: the fields one after another, aligned."""
    fields, offset = [], 0
    for name, (dtype, shape) in sorted(schema.items()):
        full = (batch_size, length, *shape)
        fields.append((name, np.dtype(dtype).str, list(full), offset))
        nbytes = np.dtype(dtype).itemsize * int(np.prod(full, dtype=np.int64))
        offset += -(-nbytes // _ALIGN) * _ALIGN
    return fields, max(offset, _ALIGN)


def _views(buf, fields) -> dict[str, np.ndarray]:
    return {name: np.ndarray(tuple(shape), np.dtype(dtype), buffer=buf, offset=offset)
            for name, dtype, shape, offset in fields}


class _Segment:
    """One slot's shared-memory file, mapped. Never closed by hand: numpy arrays made on a
    mapping keep the mmap object alive but not its buffer export, so `mmap.close()` would
    unmap memory that arrays handed out still point to. It is unmapped when the last
    reference (this object, or an array's base) goes."""

    def __init__(self, path: Path, size: int, create: bool):
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.path, self.size = path, size


class SlotArrays:
    """A worker's batch arrays (`ReplaySampler`'s `arrays`): each in the shared memory of the
    slot the owner asked to fill (`slot`), one file per slot and layout."""

    def __init__(self, stem: str):
        self.stem, self.slot, self.made = stem, 0, 0
        self.segments: dict[int, tuple[_Segment, list]] = {}

    def __call__(self, batch_size: int, length: int, schema: Schema) -> dict[str, np.ndarray]:
        fields, size = _layout(batch_size, length, schema)
        have = self.segments.get(self.slot)
        if have is None or have[1] != fields:
            if have is not None:
                have[0].path.unlink(missing_ok=True)
            # A new file has a new name, so the owner never reads a replaced one by mistake.
            self.made += 1
            path = _shm_dir() / f"{self.stem}-s{self.slot}-v{self.made}"
            self.segments[self.slot] = (_Segment(path, size, create=True), fields)
        segment, fields = self.segments[self.slot]
        return _views(segment.map, fields)

    def remove(self) -> None:
        for segment, _ in self.segments.values():
            segment.path.unlink(missing_ok=True)


def _serve(spec_json: str, seed: int, cache_chunks: int, stem: str, conn, stop) -> None:
    """A worker: fill batches on request until told to stop, the pipe closes or the owner is
    gone (a SIGKILL runs no cleanup: then the worker is re-parented)."""
    owner = os.getppid()
    stop = _Stop(stop, owner)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner handles Ctrl-C and closes us
    data = json.loads(spec_json)
    data["cluster_nodes"] = tuple(data.get("cluster_nodes", ()))
    try:
        arrays = SlotArrays(stem)
        sampler = ReplaySampler(ReplaySpec(**data), seed, cache_chunks, arrays=arrays)
        sampler.client.ping()  # a wrong password or address is said now, not at a sample
    except Exception as err:  # noqa: BLE001 - said to the owner, which raises it
        conn.send_bytes(json.dumps({"error": "failed",
                                    "message": f"{type(err).__name__}: {err}"}).encode())
        return
    conn.send_bytes(b'{"ready": true}')
    try:
        while not stop.is_set():
            if not conn.poll(_POLL):  # (EOFError once the owner closed the pipe)
                continue
            req = json.loads(conn.recv_bytes())
            conn.send_bytes(json.dumps(_fill(sampler, arrays, req, stop)).encode())
    except (OSError, EOFError, KeyboardInterrupt):
        pass  # the owner closed the pipe: it is closing the pool, or gone
    finally:
        arrays.remove()
        sampler.close()


class _Stop:
    """Set when the owner sets its event or the owner process is gone."""

    def __init__(self, event, owner: int):
        self.event, self.owner = event, owner

    def is_set(self) -> bool:
        return self.event.is_set() or os.getppid() != self.owner


def _fill(sampler: ReplaySampler, arrays: SlotArrays, req: dict, stop: _Stop) -> dict:
    """One request: sample into slot `req["slot"]`, waiting up to `req["timeout"]` seconds for
    the rate limiter (in steps of _POLL, so a stop is seen)."""
    arrays.slot = req["slot"]
    before, start = sampler.corrupt, time.monotonic()
    deadline = start + req["timeout"]
    while True:
        try:
            sampler.sample(req["batch"], req["length"],
                           timeout=max(0.01, min(_POLL, deadline - time.monotonic())))
            break
        except ReplayTimeout as err:
            if stop.is_set() or time.monotonic() >= deadline:
                return {"slot": req["slot"], "error": "timeout", "message": str(err)}
        except Exception as err:  # noqa: BLE001 - said to the owner, which raises it
            return {"slot": req["slot"], "error": "failed",
                    "message": f"{type(err).__name__}: {err}"}
    segment, fields = arrays.segments[req["slot"]]
    waited = time.monotonic() - start - sampler.last_duration  # the limiter's, every attempt
    return {"slot": req["slot"], "path": str(segment.path), "size": segment.size,
            "fields": fields, "corrupt": sampler.corrupt - before,
            "wait": waited, "duration": sampler.last_duration}


class _Worker:
    def __init__(self, k: int):
        self.k, self.generation, self.failures = k, 0, 0
        self.stem = ""
        self.process = self.conn = None
        self.inflight: deque[int] = deque()  # slots asked for, in order
        self.slots: dict[int, dict] = {}  # slot -> {"held": arrays handed out, "path": its file}


class SamplerPool:
    """`workers` processes sample (batch_size, length) batches from one replay, ahead of the
    caller. `patient`: a rate limiter that holds sampling back is not an error (a learner's
    view); otherwise `get`/`sample` raise `ReplayTimeout` after the spec's `wait_timeout`."""

    def __init__(self, spec: ReplaySpec, workers: int, batch_size: int, length: int, *,
                 seed: int = 0, cache_chunks: int = 0, depth: int = 2, patient: bool = False,
                 start_method: str = "spawn"):
        if workers < 1:
            raise ValueError(f"replay.sample_workers must be >= 1 for a pool, got {workers}")
        self.spec, self.shape = spec, (batch_size, length)
        self.depth, self.patient = max(depth, 1), patient
        self.seed, self.cache_chunks = seed, cache_chunks
        self.restarts = 0
        self._budget: int | None = None  # requests still allowed (None: no limit)
        self._ctx = mp.get_context(start_method)
        self._stop = self._ctx.Event()
        self._stem = f"{_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self._spec_json = json.dumps(asdict(spec))
        self._attached: dict[str, _Segment] = {}
        self._closed = False
        ns = spec.namespace
        self._m_sampled = metrics.REPLAY_SAMPLED_SEQUENCES.labels(ns)
        self._m_wait = metrics.REPLAY_SAMPLE_WAIT.labels(ns)
        self._m_duration = metrics.REPLAY_SAMPLE_DURATION.labels(ns)
        self._m_corrupt = metrics.REPLAY_CORRUPT_RECORDS.labels(ns)
        self._m_restarts = metrics.REPLAY_SAMPLER_RESTARTS.labels(ns)
        remove_stale_segments()
        self._workers = [_Worker(k) for k in range(workers)]
        try:
            for worker in self._workers:
                self._start(worker)
            for worker in self._workers:
                self._await_ready(worker)
        except BaseException:
            self.close()
            raise

    # -- public ------------------------------------------------------------------------------
    def sample(self, timeout: float | None = None) -> dict[str, np.ndarray]:
        """The next batch; `ReplayTimeout` if none came within `timeout` (default: the spec's
        `wait_timeout`, after which a worker says why it has none)."""
        limit = self.spec.wait_timeout + 10.0 if timeout is None else timeout
        batch = self.get(limit)
        if batch is None:
            raise ReplayTimeout(f"replay {self.spec.namespace!r}: no batch from the sampler "
                                f"workers within {limit:g} s (the rate limiter holds sampling "
                                "back, or the replay has too few steps)")
        return batch

    def get(self, timeout: float | None = None) -> dict[str, np.ndarray] | None:
        """The next batch, or None if none came within `timeout` seconds."""
        if self._closed:
            raise RuntimeError("SamplerPool is closed")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._top_up()
            busy = [w for w in self._workers if w.inflight]
            if not busy:
                if self._budget == 0:
                    raise RuntimeError("SamplerPool: the batches asked for were all taken")
                # Every slot is held by the caller: add one to the least loaded worker.
                worker = min(self._workers, key=lambda w: len(w.slots))
                self._ask(worker, max(worker.slots, default=-1) + 1)
                busy = [worker]
            # Whichever worker answers first (batches are drawn at random: order is no matter).
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait_any([h for w in busy for h in (w.conn, w.process.sentinel)], left)
            if not ready:
                return None
            worker = next(w for w in busy if w.conn in ready or w.process.sentinel in ready)
            try:
                if worker.conn not in ready or not worker.conn.poll():
                    raise EOFError
                reply = json.loads(worker.conn.recv_bytes())
            except (EOFError, OSError):
                worker.process.join(timeout=2.0)
                code = worker.process.exitcode
                self._restart(worker, "closed its pipe" if code is None
                              else f"exited with code {code}")
                continue
            slot = worker.inflight.popleft()
            if reply.get("error") == "timeout":
                if self._budget is not None:
                    self._budget += 1  # that batch is still owed
                if not self.patient:
                    raise ReplayTimeout(reply["message"])
                continue  # asked again at the next top-up
            if "error" in reply:
                raise RuntimeError(f"replay {self.spec.namespace!r}: sampler worker "
                                   f"{worker.k}: {reply['message']}")
            worker.failures = 0
            return self._hand_out(worker, slot, reply)

    def batches(self, n: int) -> Iterator[dict[str, np.ndarray]]:
        """Exactly `n` batches, one at a time, asking the workers for no more (nothing is left
        queued afterwards: a benchmark's rounds then start from idle workers)."""
        self._budget = n
        try:
            for _ in range(n):
                yield self.sample()
        finally:
            self._budget = None

    def stats(self) -> dict[str, int]:
        return {"workers": len(self._workers), "restarts": self.restarts,
                "slots": sum(len(w.slots) for w in self._workers)}

    def close(self) -> None:
        """Stop the workers (within ~_POLL seconds; then terminated) and remove every slot."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        for worker in self._workers:
            if worker.conn is not None:
                worker.conn.close()
        for worker in self._workers:
            if worker.process is not None:
                self._end(worker)
        self._attached.clear()  # mappings go with the last array made on them

    def __enter__(self) -> SamplerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:  # noqa: BLE001 - at interpreter exit modules may be gone
                pass

    # -- internals -----------------------------------------------------------------------------
    def _start(self, worker: _Worker) -> None:
        parent, child = self._ctx.Pipe()
        stem = f"{self._stem}-w{worker.k}g{worker.generation}"
        process = self._ctx.Process(
            target=_serve, name=f"replay-sampler-{worker.k}", daemon=True,
            args=(self._spec_json, self.seed * 1009 + worker.k * 7919 + worker.generation,
                  self.cache_chunks, stem, child, self._stop))
        try:
            process.start()
        finally:
            child.close()
        worker.process = process
        worker.conn, worker.stem = parent, stem
        worker.inflight.clear()
        worker.slots = {}

    def _await_ready(self, worker: _Worker, timeout: float = 120.0) -> None:
        """A worker says it reached the replay; its error (e.g. a wrong password) is raised."""
        ready = wait_any([worker.conn, worker.process.sentinel], timeout)
        reply: dict = {}
        if worker.conn in ready:
            try:
                reply = json.loads(worker.conn.recv_bytes())
            except (EOFError, OSError):
                reply = {}
        if not reply.get("ready"):
            why = reply.get("message") or (
                f"exited with code {worker.process.exitcode}" if ready
                else f"did not start within {timeout:g} s")
            raise RuntimeError(f"replay {self.spec.namespace!r}: sampler worker {worker.k} "
                               f"could not start: {why}")

    def _end(self, worker: _Worker) -> None:
        process = worker.process
        process.join(timeout=_POLL * 3 + 2)
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
        for path in _shm_dir().glob(f"{worker.stem}-s*"):  # what it did not remove
            path.unlink(missing_ok=True)

    def _restart(self, worker: _Worker, why: str) -> None:
        worker.failures += 1
        if worker.failures > 3:
            raise RuntimeError(f"replay {self.spec.namespace!r}: sampler worker {worker.k} "
                               f"{why}, {worker.failures} times without a batch in between")
        self.restarts += 1
        self._m_restarts.inc()
        log.warning("replay %r: sampler worker %d %s; starting it again (restart %d)",
                    self.spec.namespace, worker.k, why, self.restarts)
        if self._budget is not None:
            self._budget += len(worker.inflight)  # those batches are still owed
        worker.conn.close()
        self._end(worker)  # its files go; batches handed out keep their mappings
        for info in worker.slots.values():
            if info["path"]:
                self._attached.pop(info["path"], None)
        worker.generation += 1
        self._start(worker)
        self._await_ready(worker)

    def _ask(self, worker: _Worker, slot: int) -> None:
        if self._budget is not None:
            self._budget -= 1
        info = worker.slots.setdefault(slot, {"held": None, "path": None})
        info["held"] = None
        worker.inflight.append(slot)
        try:
            worker.conn.send_bytes(json.dumps({
                "slot": slot, "batch": self.shape[0], "length": self.shape[1],
                "timeout": self.spec.wait_timeout}).encode())
        except OSError:
            pass  # it died: `get` sees its exit and starts it again

    def _top_up(self) -> None:
        """Queue requests up to `depth` per worker, into slots nobody holds, one at a time to
        the least loaded worker (so a limited number of batches is spread over all of them)."""
        while self._budget != 0:
            best = None
            for worker in sorted(self._workers, key=lambda w: len(w.inflight)):
                if len(worker.inflight) >= self.depth:
                    break
                slot = self._free_slot(worker)
                if slot is not None:
                    best = (worker, slot)
                    break
            if best is None:
                return
            self._ask(*best)

    def _free_slot(self, worker: _Worker) -> int | None:
        for s, info in worker.slots.items():
            if s not in worker.inflight and (info["held"] is None or unheld(info["held"])):
                return s
        if len(worker.slots) < self.depth + 2:
            return max(worker.slots, default=-1) + 1
        return None

    def _hand_out(self, worker: _Worker, slot: int, reply: dict) -> dict[str, np.ndarray]:
        path, info = reply["path"], worker.slots[slot]
        if info["path"] not in (None, path):  # the worker replaced this slot's file
            self._attached.pop(info["path"], None)
        segment = self._attached.get(path)
        if segment is None:
            segment = self._attached[path] = _Segment(Path(path), reply["size"], create=False)
        arrays = _views(segment.map, reply["fields"])
        info["held"], info["path"] = arrays, path
        self._m_sampled.inc(self.shape[0])
        self._m_wait.observe(reply["wait"])
        self._m_duration.observe(reply["duration"])
        if reply["corrupt"]:
            self._m_corrupt.inc(reply["corrupt"])
        return dict(arrays)


def remove_stale_segments() -> int:
    """Remove slot files of pools whose process is gone (killed before it could close)."""
    removed = 0
    for path in _shm_dir().glob(f"{_PREFIX}*"):
        try:
            pid = int(path.name[len(_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            path.unlink(missing_ok=True)
            removed += 1
    return removed
