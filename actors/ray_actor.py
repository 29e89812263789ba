"""The Ray actor around `ActorWorker`: a thin shell that runs the stepping loop in a thread.

Created by the runtime as ``ray.remote(EnvActor).options(name=f"actor-{i}", max_restarts=-1,
max_concurrency=4)``; the loop starts in the constructor, so an actor that Ray restarts after a
crash resumes by itself with the current weights, a new stream id (its lost partial episode is
simply not stored) and a counted restart.
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from typing import Any

from diswm import metrics, telemetry
from diswm.config import build_config
from replay_service.client import ReplaySpec

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
        self._error: str | None = None
        # An EGL context is current in one thread only: the envs are built, stepped and closed
        # by the loop thread; the constructor waits until they are up.
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error:
            raise RuntimeError(f"{self.name} failed to start:\n{self._error}")

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

    def _loop(self) -> None:
        try:
            self._start_worker()
        except Exception:  # noqa: BLE001 - reported by the constructor
            self._error = traceback.format_exc()
            return
        finally:
            self._ready.set()
        try:
            while not self._stop.is_set():
                if self.worker.steps % 50 == 0 and self.worker.budget_spent():
                    break  # the run has its env steps: store what is open and stop stepping
                self.worker.step()
        except Exception:  # noqa: BLE001 - a dead loop must not look like a live actor
            log.error("%s crashed:\n%s", self.name, traceback.format_exc())
            os._exit(1)  # Ray restarts the actor (max_restarts) and counts it
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
        return {**self.worker.stats(), "pid": os.getpid(), "metrics_port": self.metrics_port,
                "running": self._thread.is_alive()}

    def pid(self) -> int:
        return os.getpid()


def _reconstructed() -> bool:
    try:
        import ray

        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # noqa: BLE001 - outside Ray there is nothing to restart
        return False
