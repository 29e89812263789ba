"""The Ray actor around `LearnerService`: the training loop in a thread, control by methods.

Created by the runtime as ``ray.remote(LearnerActor).options(name="learner", num_gpus=g,
max_restarts=-1, max_concurrency=4)``. Fractional `num_gpus` (runtime.learner_gpus) let several
runs' learners share one card. A restarted learner resumes from its last checkpoint.

Crashes are bounded as for actors (diswm/supervision.py): each records its cause; a restart
waits a doubling backoff; after `runtime.max_crash_restarts` crashes in a row of the same cause
the learner stays up without training and reports the error (stats()["error"], `done()`), which
`diswm run` prints as one line and `cluster status` shows.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from diswm import telemetry
from diswm.config import build_config
from diswm.control import NamespaceHeld, RunControl
from diswm.runfolder import CHECKPOINT, private_dir
from diswm.storage import RunStorage, scratch_dir
from diswm.supervision import CrashLedger, one_line, ray_node_id
from replay_service.client import ReplaySpec, connect

log = logging.getLogger(__name__)


class LearnerActor:
    def __init__(self, cfg_dict: dict, spec: ReplaySpec, run_dir: str, action_dim: int,
                 host: str = "127.0.0.1", storage_name: str = ""):
        import torch

        self.cfg = build_config(cfg_dict)
        torch.set_num_threads(self.cfg.runtime.learner_cpus)  # Ray sets OMP threads to num_cpus
        self.run_dir = Path(run_dir)  # the driver's run folder: written here only without storage
        # With runtime.storage the learner works in this node's scratch and the storage keeps
        # the run's files (diswm/storage.py): on any node it resumes from its last checkpoint.
        self.storage = RunStorage.for_run(self.cfg.runtime.storage, storage_name)
        self.work_dir = scratch_dir(storage_name) if self.storage else self.run_dir
        self.lines: list[str] = []
        self.summary: dict[str, Any] | None = None
        self.error: str | None = None
        self.failed = False
        self.service = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.metrics_port = 0
        client = connect(spec)
        self.ledger = CrashLedger(client, spec.namespace, "learner",
                                  limit=self.cfg.runtime.max_crash_restarts)
        self.control = RunControl(client, spec.namespace)
        count, message = self.ledger.recent()
        if self.ledger.exhausted(count):
            self.failed = True
            self.error = (f"learner stopped after {count} crashes in a row with the same cause: "
                          f"{message}")
            self.control.report_error("learner", self.error)
            log.error("%s", self.error)
            return
        if count:
            self._progress(f"learner: crash {count} of this cause; waiting "
                           f"{self.ledger.backoff(count):.0f} s before starting")
            time.sleep(self.ledger.backoff(count))
        # Built, warmed up and trained on one thread: PyTorch's OpenMP keeps a worker pool per
        # calling thread, and two pools on 2 cores made every update sleep at its barriers
        # (1.3x slower in a run; see the learner's `built_on`). The constructor waits for the build, so its errors reach the caller.
        built = threading.Event()
        self._go = threading.Event()
        self._build_error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(spec, action_dim, built),
                                        name="learner", daemon=True)
        self._thread.start()
        built.wait()
        if self._build_error is not None:
            raise self._build_error
        self.metrics_port = telemetry.serve_metrics(host)
        telemetry.register(client, spec.namespace, "learner",
                           telemetry.advertised(host, self.metrics_port))
        self._targets_file = self.work_dir / "prometheus" / "targets.json"
        self.refresh_targets()
        self._started = time.monotonic()
        self._go.set()

    def _main(self, spec: ReplaySpec, action_dim: int, built: threading.Event) -> None:
        from learner.service import LearnerService

        try:
            if self.storage is not None:
                self._pull()
            self.service = LearnerService(self.cfg, spec, self.work_dir, action_dim,
                                          progress=self._progress, owner=str(self.run_dir),
                                          storage=self.storage)
        except NamespaceHeld as err:  # another live run: refused, not a crash to retry
            self._build_error = err
        except Exception as err:  # noqa: BLE001 - a failed restart counts as a crash of its cause
            if not _reconstructed():
                self._build_error = err  # the first start: a bad config or missing file
            else:
                self._crashed(traceback.format_exc())
        finally:
            built.set()
        if self._build_error is None:
            self._go.wait()
            self._loop()

    def _pull(self) -> None:
        """Fresh scratch with the run's files from the storage (it holds the truth: scratch a
        learner left on this node may be older, or another run's)."""
        shutil.rmtree(self.work_dir, ignore_errors=True)
        private_dir(self.work_dir)
        got = self.storage.pull(self.work_dir)
        self._progress(f"learner: working in {self.work_dir} on node {ray_node_id()}; "
                       f"{len(got)} file(s) from {self.storage.uri}"
                       + (" (a checkpoint among them)" if str(CHECKPOINT) in got else ""))

    def _crashed(self, text: str) -> None:
        log.error("learner crashed:\n%s", text)
        try:
            self.ledger.record(text)
            self.control.report_error("learner", f"learner crashed: {one_line(text)}")
        except Exception:  # noqa: BLE001 - the exit below matters more
            log.error("learner: could not record the crash in Redis")
        os._exit(1)  # Ray restarts the learner, which resumes from its checkpoint

    def _progress(self, line: str) -> None:
        self.lines.append(line)
        if getattr(self, "service", None) is not None:  # not while the service is being built
            self.refresh_targets()
        log.info(line)

    def _loop(self) -> None:
        try:
            self.summary = self.service.run(self._stop)
        except Exception:  # noqa: BLE001 - reported through stats(), the ledger and the log
            self.error = traceback.format_exc()
            self._crashed(self.error)
        if time.monotonic() - self._started > self.ledger.healthy_after:
            self.ledger.clear()

    def refresh_targets(self) -> None:
        if self.service is None:
            return
        client = self.service.sampler.client
        ns = self.service.spec.namespace
        telemetry.write_file_sd(self._targets_file, telemetry.targets(client, ns), ns)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self.service is None:
            return {}
        self._thread.join(timeout=300)
        return self.summary or self.service.write_summary()

    def done(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        base = self.service.stats() if self.service is not None else {"updates": None}
        return {**base, "pid": os.getpid(),
                "loop_tid": self._thread.native_id if self._thread is not None else None,
                "metrics_port": self.metrics_port, "running": self.done() is False,
                "error": self.error, "failed": self.failed, "node": ray_node_id(),
                "work_dir": str(self.work_dir)}

    def progress_lines(self, start: int = 0) -> list[str]:
        return self.lines[start:]

    def pid(self) -> int:
        return os.getpid()


def _reconstructed() -> bool:
    try:
        import ray

        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # noqa: BLE001 - outside Ray there is nothing to restart
        return False
