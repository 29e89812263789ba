"""The Ray actor around `ActorWorker`: a thin shell that runs the stepping loop in a thread.

Created by the runtime as ``ray.remote(EnvActor).options(name=f"actor-{i}", max_restarts=-1,
max_concurrency=4)``; the loop starts in the constructor, so an actor that Ray restarts after a
crash resumes by itself with the current weights, a new stream id (its lost partial episode is
simply not stored) and a counted restart.

Crashes are bounded (diswm/supervision.py): a crash records its cause in the run's crash ledger
and the process exits (Ray restarts it); a restarted actor waits a backoff that doubles per crash
of the same cause, and after `runtime.max_crash_restarts` of them in a row it stays up without
stepping, its error on the control plane for `cluster status` and `diswm run`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from typing import Any

from diswm import metrics, priority, telemetry
from diswm.config import build_config
from diswm.control import RunControl
from diswm.supervision import CrashLedger, one_line, ray_node_id
from replay_service.client import ReplaySpec, connect

log = logging.getLogger(__name__)


class EnvActor:
    def __init__(self, cfg_dict: dict, index: int, spec: ReplaySpec, host: str = "127.0.0.1"):
        import torch

        torch.set_num_threads(1)  # many actors share the cores; inference batches are small
        self.cfg = build_config(cfg_dict)
        self.index, self.spec, self.host = index, spec, host
        self.name = f"actor-{index}"
        self.worker = None
        self.metrics_port = telemetry.serve_metrics(host)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._closed = False
        self.failed: str | None = None  # set when crashes stopped this actor (surfaced)
        self._start_error: str | None = None
        self.ledger: CrashLedger | None = None
        # An EGL context is current in one thread only: the envs are built, stepped and closed
        # by the loop thread; the constructor waits until they are up.
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error:
            raise RuntimeError(f"{self.name} failed to start: {one_line(self._start_error)}")

    def _start_worker(self) -> None:
        from actors.worker import ActorWorker

        self.worker = ActorWorker(self.cfg, self.index, self.spec)
        telemetry.register(self.worker.writer.client, self.spec.namespace, self.name,
                           telemetry.advertised(self.host, self.metrics_port))
        if _reconstructed():
            metrics.ACTOR_RESTARTS.labels(str(self.index)).inc()
            self.worker.control.add(actor_restarts=1)
            log.warning("%s restarted by Ray; resuming with policy version %d", self.name,
                        self.worker.policy.version)

    def _guarded_start(self) -> bool:
        """Start the worker unless this actor's crashes used up their restarts; True if it runs."""
        client = connect(self.spec)
        self.ledger = CrashLedger(client, self.spec.namespace, self.name,
                                  limit=self.cfg.runtime.max_crash_restarts)
        self.control = RunControl(client, self.spec.namespace)
        count, message = self.ledger.recent()
        if self.ledger.exhausted(count):
            self.failed = (f"{self.name} stopped after {count} crashes in a row with the same "
                           f"cause: {message}")
            self.control.report_error(self.name, self.failed)
            log.error("%s", self.failed)
            return False
        if count:
            log.warning("%s: crash %d of this cause; waiting %.0f s before starting", self.name,
                        count, self.ledger.backoff(count))
            self._stop.wait(self.ledger.backoff(count))
        self._start_worker()
        return True

    def _crashed(self, text: str) -> None:
        """Record the crash (best effort: Redis may be the cause) and exit for Ray to restart."""
        log.error("%s crashed:\n%s", self.name, text)
        try:
            if self.ledger is not None:
                self.ledger.record(text)
                self.control.report_error(self.name, f"{self.name} crashed: {one_line(text)}")
        except Exception:  # noqa: BLE001 - the exit below matters more
            log.error("%s: could not record the crash in Redis", self.name)
        os._exit(1)  # Ray restarts the actor (max_restarts) and counts it

    def _loop(self) -> None:
        applied = priority.lower(self.cfg.runtime.background_priority)
        if applied != self.cfg.runtime.background_priority:
            log.warning("%s: runtime.background_priority=%s refused by the system; running at %s",
                        self.name, self.cfg.runtime.background_priority, applied)
        try:
            running = self._guarded_start()
        except Exception:  # noqa: BLE001 - a restart that fails counts as a crash of its cause
            if not _reconstructed():  # the first start: said by the constructor to the caller
                self._start_error = traceback.format_exc()
                return
            self._crashed(traceback.format_exc())
            return
        finally:
            self._ready.set()
        if not running:
            return
        started, healthy = time.monotonic(), False
        try:
            while not self._stop.is_set():
                if not healthy and time.monotonic() - started > self.ledger.healthy_after:
                    healthy = True  # clean for a while: its earlier crashes no longer count
                    self.ledger.clear()
                    self.control.clear_error(self.name)
                if self.worker.steps % 50 == 0 and self.worker.budget_spent():
                    break  # the run has its env steps: store what is open and stop stepping
                self.worker.step()
        except Exception:  # noqa: BLE001 - a dead loop must not look like a live actor
            self._crashed(traceback.format_exc())
        finally:
            self._close()

    def _close(self) -> None:
        """Store partial episodes into the replay and release the envs (loop thread only)."""
        if not self._closed and self.worker is not None:
            self._closed = True
            self.worker.close()
            telemetry.unregister(self.worker.writer.client, self.spec.namespace, self.name)

    def stop(self) -> dict[str, Any]:
        """Stop stepping; the loop flushes partial episodes into the replay (nothing is lost)."""
        self._stop.set()
        if self.worker is not None:
            self.worker.stopping.set()  # an insert blocked by the rate limiter gives way
        self._thread.join(timeout=120)
        return self.stats()

    def stats(self) -> dict[str, Any]:
        base = self.worker.stats() if self.worker is not None else {"actor": self.index}
        return {**base, "name": self.name, "pid": os.getpid(), "loop_tid": self._thread.native_id,
                "metrics_port": self.metrics_port,
                "running": self._thread.is_alive(), "failed": self.failed, "node": ray_node_id()}

    def pid(self) -> int:
        return os.getpid()


def _reconstructed() -> bool:
    try:
        import ray

        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # noqa: BLE001 - outside Ray there is nothing to restart
        return False
