"""The Ray actor around `LearnerService`: the training loop in a thread, control by methods.

Created by the runtime as ``ray.remote(LearnerActor).options(name="learner", num_gpus=g,
max_restarts=-1, max_concurrency=4)``. Fractional `num_gpus` (runtime.learner_gpus) let several
runs' learners share one card. A restarted learner resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from pathlib import Path
from typing import Any

from diswm import telemetry
from diswm.config import build_config
from replay_service.client import ReplaySpec

log = logging.getLogger(__name__)


class LearnerActor:
    def __init__(self, cfg_dict: dict, spec: ReplaySpec, run_dir: str, action_dim: int,
                 host: str = "127.0.0.1"):
        import torch

        from learner.service import LearnerService

        self.cfg = build_config(cfg_dict)
        torch.set_num_threads(self.cfg.runtime.learner_cpus)  # Ray sets OMP threads to num_cpus
        self.run_dir = Path(run_dir)
        self.lines: list[str] = []
        self.service = LearnerService(self.cfg, spec, self.run_dir, action_dim,
                                      progress=self._progress)
        self.metrics_port = telemetry.serve_metrics(host)
        client = self.service.sampler.client
        telemetry.register(client, spec.namespace, "learner",
                           telemetry.advertised(host, self.metrics_port))
        self._targets_file = self.run_dir / "prometheus" / "targets.json"
        self.refresh_targets()
        self._stop = threading.Event()
        self.summary: dict[str, Any] | None = None
        self.error: str | None = None
        self._thread = threading.Thread(target=self._loop, name="learner", daemon=True)
        self._thread.start()

    def _progress(self, line: str) -> None:
        self.lines.append(line)
        if getattr(self, "service", None) is not None:  # not while the service is being built
            self.refresh_targets()
        log.info(line)

    def _loop(self) -> None:
        try:
            self.summary = self.service.run(self._stop)
        except Exception:  # noqa: BLE001 - reported through stats() and the log
            self.error = traceback.format_exc()
            log.error("learner crashed:\n%s", self.error)
            os._exit(1)  # Ray restarts the learner, which resumes from its checkpoint

    def refresh_targets(self) -> None:
        client = self.service.sampler.client
        ns = self.service.spec.namespace
        telemetry.write_file_sd(self._targets_file, telemetry.targets(client, ns), ns)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout=300)
        return self.summary or self.service.write_summary()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        return {**self.service.stats(), "pid": os.getpid(), "metrics_port": self.metrics_port,
                "running": self._thread.is_alive(), "error": self.error}

    def progress_lines(self, start: int = 0) -> list[str]:
        return self.lines[start:]

    def pid(self) -> int:
        return os.getpid()
