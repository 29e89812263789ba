"""The distributed learner's logic, without Ray: replay in, weights out, run state in Redis.

    service = LearnerService(cfg, spec, run_dir, action_dim)
    service.run(stop_event)        # until train.steps env steps, or until stopped; then the
                                   # final evaluation, checkpoint and summary

It runs the training loop the serial runner runs (learner/loop.py) with a `ReplaySource`: the
actors step the envs and count env steps globally in Redis, batches come from the replay's
prefetcher (its rate limiter holds the train ratio), every update publishes the new policy
version for the actors, and the colour-scheme switch is set on the control plane for every env.
A learner restarted on the same run folder resumes from its last checkpoint; the replay lives on
in Redis.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from diswm import metrics
from diswm.agent.teacher import fetch_pretrained, publish_teacher, stores_teacher_latents
from diswm.broadcast import BadWeights, WeightStore
from diswm.checkpoints import CheckpointSet
from diswm.config import Config
from diswm.control import NamespaceLease, RunControl
from diswm.runfolder import CHECKPOINT, append_episode, last_episode_id
from diswm.storage import RunStorage
from learner.learner import Learner
from learner.loop import BatchSource, Counters, TrainLoop, owed_updates
from replay_service.client import Prefetcher, ReplaySampler, ReplaySpec, connect
from replay_service.workers import SamplerPool


class ReplaySource(BatchSource):
    """The distributed run's `BatchSource`: the run's counters from Redis (the actors keep
    them), batches from the replay as its rate limiter grants them, the policy published after
    every update, the namespace's lease kept while the loop runs."""

    def __init__(self, cfg: Config, spec: ReplaySpec, run_dir: Path, learner: Learner, *,
                 resumed: bool, progress: Callable[[str], None], owner: str | None = None,
                 storage: RunStorage | None = None):
        self.cfg, self.spec, self.run_dir, self.learner = cfg, spec, run_dir, learner
        self.progress, self.storage = progress, storage
        self.sampler = ReplaySampler(spec, seed=cfg.train.seed + learner.updates)
        # One live run per namespace: a second run would mix its weights and counters into ours.
        self.lease = NamespaceLease(self.sampler.client, spec.namespace,
                                    owner=owner or str(run_dir.resolve()))
        self.lease.acquire()
        self._lease_kept = time.monotonic()
        self.weights = WeightStore(self.sampler.client, spec.namespace)
        self.control = RunControl(self.sampler.client, spec.namespace)
        self._episodes_after = last_episode_id(run_dir)  # training episodes in episodes.csv
        if resumed:
            self.control.add(learner_restarts=1)
        self.control.set("scheme", learner.scheme)
        if stores_teacher_latents(cfg) and learner.teacher is not None:
            # Before the first policy: the actors compute the teacher's latents from their
            # first stored step on (diswm/agent/teacher.py).
            publish_teacher(self.sampler.client, spec.namespace, learner.teacher)
        self._published = -1
        self.publish()
        ns = spec.namespace
        self._m = {"updates": metrics.LEARNER_UPDATES.labels(ns),
                   "skipped": metrics.LEARNER_SKIPPED_UPDATES.labels(ns),
                   "duration": metrics.LEARNER_UPDATE_DURATION.labels(ns),
                   "lag": metrics.LEARNER_POLICY_LAG.labels(ns),
                   "env_steps": metrics.LEARNER_ENV_STEPS.labels(ns),
                   "eval": metrics.LEARNER_EVAL_RETURN.labels(ns),
                   "openl_image": metrics.LEARNER_OPENLOOP_IMAGE_MSE.labels(ns),
                   "openl_reward": metrics.LEARNER_OPENLOOP_REWARD_ERROR.labels(ns)}
        self._learning = {k: g.labels(ns) for k, g in metrics.LEARNING.items()}
        self._prefetcher = None
        self._idle_since = 0.0
        self._initial_done = learner.updates > 0

    def publish(self) -> None:
        """Publish the policy; weights that are not finite are never published (the actors keep
        acting with the last good version) and the refusal is reported on the control plane."""
        version, state = self.learner.get_weights("policy")
        self._published = version
        try:
            _, seconds = self.weights.publish(version, state)
        except BadWeights as err:
            self.control.report_error("learner", str(err))
            self.progress(f"learner: {err}")
            return
        metrics.LEARNER_BROADCAST.labels(self.spec.namespace).observe(seconds)
        metrics.LEARNER_POLICY_VERSION.labels(self.spec.namespace).set(version)

    def _open(self):
        cfg = self.cfg
        if cfg.replay.sample_workers:  # sampler processes, batches in shared memory
            self.progress(f"learner: {cfg.replay.sample_workers} sampler processes")
            return SamplerPool(self.spec, cfg.replay.sample_workers, cfg.train.batch_size,
                               cfg.train.batch_length, seed=cfg.train.seed + self.learner.updates,
                               cache_chunks=self.sampler.cache_chunks,
                               depth=max(cfg.replay.prefetch, 1), patient=True)
        return Prefetcher(self.sampler, cfg.train.batch_size, cfg.train.batch_length,
                          depth=max(cfg.replay.prefetch, 1), patient=True)

    # -- BatchSource ---------------------------------------------------------------------------
    def counters(self) -> Counters:
        return self.control.counters()

    def advance(self) -> Counters:
        if time.monotonic() - self._lease_kept > 5.0:
            self.lease.keep()
            self._lease_kept = time.monotonic()
        counters = self.control.counters()
        self._m["env_steps"].set(counters["env_steps"])
        return counters

    def finished(self, end: int, counters: Counters, updates: int) -> bool:
        if counters["env_steps"] < end:
            return False
        # The actors stop; finish the updates this much data is owed at the train ratio (they
        # ran ahead by up to replay.tolerance), then stop, or when the limiter allows no more
        # samples for 30 s: nothing left to train on.
        return (updates >= owed_updates(self.cfg, counters["agent_steps"])
                or bool(self._idle_since and time.perf_counter() - self._idle_since > 30))

    def batches(self, counters: Counters) -> Iterator[dict[str, np.ndarray]]:
        if self._prefetcher is None:
            self._prefetcher = self._open()
        batch = self._prefetcher.get(timeout=0.5)
        if batch is None:  # the limiter holds us back; the loop looks at its stop flag
            self._idle_since = self._idle_since or time.perf_counter()
            return
        self._idle_since = 0.0
        repeats = 1 if self._initial_done else max(self.cfg.train.pretrain_updates, 1)
        self._initial_done = True
        for i in range(repeats):
            yield batch
            if i + 1 < repeats:
                batch = self._prefetcher.get(timeout=5.0) or batch

    def after_update(self, batch: dict[str, np.ndarray], out: dict[str, float]) -> None:
        if out.get("skipped"):
            self._m["skipped"].inc()
        if self.learner.version == self._published:
            return  # the update was skipped: nothing changed, nothing to publish
        self._m["updates"].inc()
        self._m["duration"].observe(out["update_seconds"])
        for key, gauge in self._learning.items():
            if key in out:
                gauge.set(out[key])
        for lag in self.learner.version - 1 - batch["policy_version"][:, -1]:
            self._m["lag"].observe(max(int(lag), 0))
        self.publish()

    def set_scheme(self, scheme: str) -> None:
        self.control.set("scheme", scheme)

    def owed_updates(self, counters: Counters) -> int | None:
        return owed_updates(self.cfg, counters["agent_steps"])

    def sync(self) -> None:
        self.collect_episodes()

    def collect_episodes(self) -> int:
        """Append the training episodes the actors recorded since the last call to
        ``episodes.csv``; returns how many."""
        new = self.control.episodes(self._episodes_after)
        for entry_id, fields in new:
            append_episode(self.run_dir, {**fields, "id": entry_id})
        if new:
            self._episodes_after = new[-1][0]
        return len(new)

    def on_evaluation(self, row: dict[str, Any]) -> None:
        self._m["eval"].set(row["return_mean"])
        if row.get("openl_image_mse") is not None:
            self._m["openl_image"].set(row["openl_image_mse"])
            self._m["openl_reward"].set(row["openl_reward_mae"])

    def on_checkpoint(self) -> None:
        if self.cfg.replay.persistence == "snapshot":
            self.sampler.snapshot()

    def saved(self) -> None:
        if self.storage is None:
            return
        try:
            self.storage.push(self.run_dir)
        except Exception as err:  # noqa: BLE001 - any backend's failure: retried at the next save
            self.progress(f"learner: could not push the run's files to {self.storage.uri}: "
                          f"{type(err).__name__}: {err}"[:300])

    def summary_fields(self) -> dict[str, Any]:
        return {"namespace": self.spec.namespace, "counters": self.control.counters(),
                "replay": self.sampler.stats()}

    def close(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None

    def finish(self, reached_end: bool) -> None:
        if reached_end:
            self.control.set("done", "1")

    def release(self) -> None:
        self.lease.release()


class LearnerService:
    """The distributed learner: `TrainLoop` over a `ReplaySource` (resumes from the run folder's
    checkpoint when there is one)."""

    def __init__(self, cfg: Config, spec: ReplaySpec, run_dir: str | Path, action_dim: int, *,
                 progress: Callable[[str], None] = print, owner: str | None = None,
                 storage: RunStorage | None = None):
        """`run_dir`: where the learner writes (the run folder, or node-local scratch that
        `storage` persists); `owner`: the run's identity on its namespace lease (the driver's
        run folder; default `run_dir`)."""
        self.cfg, self.spec, self.run_dir = cfg, spec, Path(run_dir)
        self.progress = progress
        remote = bool(cfg.runtime.eval_actor and _in_ray())  # Evaluations: none without episodes
        resume = bool(CheckpointSet(self.run_dir / CHECKPOINT.parent).candidates())
        pretrained = None
        if not resume and cfg.distill.teacher and (cfg.distill.enabled or cfg.distill.finetune):
            # The driver published the teacher's weights: no path of its machine is read here.
            pretrained = fetch_pretrained(connect(spec), spec.namespace)
        self.loop = TrainLoop(cfg, self.run_dir, action_dim, resume=resume, progress=progress,
                              log=lambda msg: progress(f"learner: {msg}"),
                              remote_evaluations=remote, pretrained=pretrained)
        self.learner = self.loop.learner
        if cfg.train.compile:  # before any actor inserts: a cold compile takes minutes
            self.progress("learner: compiling the hot paths before the actors start")
            self.learner.warm_up()
        self.source = ReplaySource(cfg, spec, self.run_dir, self.learner,
                                   resumed=self.loop.resumed, progress=progress, owner=owner,
                                   storage=storage)
        self.loop.source = self.source
        self.sampler, self.lease, self.control = (self.source.sampler, self.source.lease,
                                                  self.source.control)

    def run(self, stop: threading.Event | None = None) -> dict[str, Any]:
        return self.loop.run(self.source, stop=stop)

    def evaluate(self, env_steps: int, point: int, wait: bool = False) -> None:
        self.loop.evaluate(env_steps, point, wait=wait)

    def collect_evaluations(self, block: bool = False) -> int:
        return self.loop.collect_evaluations(block=block)

    def write_summary(self) -> dict[str, Any]:
        return self.loop.write_summary()

    def stats(self) -> dict[str, Any]:
        evals = self.loop.evals
        return {"updates": self.learner.updates, "version": self.learner.version,
                "skipped_updates": self.learner.skipped_updates,
                "resumed_at": self.loop.resumed_at,  # the checkpoint's updates; None: fresh
                # the counters the loop read last: a stats call never waits on Redis
                "scheme": self.learner.scheme,
                "env_steps": self.loop.counters.get("env_steps") if self.loop.counters else None,
                "evaluations": len(evals),
                "last_eval": evals[-1]["return_mean"] if evals else None}


def _in_ray() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()
