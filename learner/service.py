"""The distributed learner's logic, without Ray: replay in, weights out, run state in Redis.

    service = LearnerService(cfg, spec, run_dir, action_dim)
    service.run(stop_event)        # until train.steps env steps, or until stopped
    service.close()                # final checkpoint, summary, curve

Each iteration: read the run's counters (the actors count env steps globally), switch every env
to the next colour scheme at `distraction.switch_at` of the run, evaluate and checkpoint on
schedule, take a prefetched batch (the replay's rate limiter holds the train ratio), update, and
publish the new policy version for the actors. A learner restarted on the same run folder
resumes from its last checkpoint; the replay lives on in Redis.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from diswm import metrics
from diswm.agent.teacher import publish_teacher, stores_teacher_latents
from diswm.broadcast import WeightStore
from diswm.config import Config
from diswm.control import NamespaceLease, RunControl
from diswm.runfolder import (
    CHECKPOINT,
    append_csv,
    append_episode,
    last_episode_id,
    private_dir,
    write_summary,
)
from learner.evaluator import openl_note
from learner.learner import Learner
from learner.schedule import RunSchedule, legacy_schedule
from replay_service.client import Prefetcher, ReplaySampler, ReplaySpec
from replay_service.workers import SamplerPool


class LearnerService:
    def __init__(self, cfg: Config, spec: ReplaySpec, run_dir: str | Path, action_dim: int, *,
                 progress: Callable[[str], None] = print, log_every: float = 10.0):
        self.cfg, self.spec, self.run_dir = cfg, spec, Path(run_dir)
        self.progress, self.log_every = progress, log_every
        self._log = lambda msg: self.progress(f"learner: {msg}")
        private_dir(self.run_dir)
        ckpt = self.run_dir / CHECKPOINT
        self.evals: list[dict] = []
        self.schedule = RunSchedule.from_config(cfg)
        if ckpt.exists():
            self.learner, extra = Learner.from_checkpoint(ckpt, log=self._log)
            self.schedule.load(extra.get("schedule")
                               or legacy_schedule(cfg, extra.get("next", {})))
            summary = self.run_dir / "metrics.json"
            if summary.exists():
                self.evals = json.loads(summary.read_text()).get("evaluations", [])
            self.progress(f"learner: resumed from {ckpt} at update {self.learner.updates}")
            self.resumed = True
        else:
            self.learner = Learner(cfg, action_dim, log=self._log)
            self.resumed = False
        if cfg.train.compile:  # before any actor inserts: a cold compile takes minutes
            self.progress("learner: compiling the hot paths before the actors start")
            self.learner.warm_up()
        self.sampler = ReplaySampler(spec, seed=cfg.train.seed + self.learner.updates)
        # One live run per namespace: a second run would mix its weights and counters into ours.
        self.lease = NamespaceLease(self.sampler.client, spec.namespace,
                                    owner=str(self.run_dir.resolve()))
        self.lease.acquire()
        self._lease_kept = time.monotonic()
        self.weights = WeightStore(self.sampler.client, spec.namespace)
        self.control = RunControl(self.sampler.client, spec.namespace)
        self._episodes_after = last_episode_id(self.run_dir)  # training episodes in episodes.csv
        if self.resumed:
            self.control.add(learner_restarts=1)
        self.control.set("scheme", self.learner.scheme)
        if stores_teacher_latents(cfg) and self.learner.teacher is not None:
            # Before the first policy: the actors compute the teacher's latents from their
            # first stored step on (diswm/agent/teacher.py).
            publish_teacher(self.sampler.client, spec.namespace, self.learner.teacher)
        self.publish()
        self._start_evaluator(action_dim)
        ns = spec.namespace
        self._m = {"updates": metrics.LEARNER_UPDATES.labels(ns),
                   "duration": metrics.LEARNER_UPDATE_DURATION.labels(ns),
                   "version": metrics.LEARNER_POLICY_VERSION.labels(ns),
                   "lag": metrics.LEARNER_POLICY_LAG.labels(ns),
                   "env_steps": metrics.LEARNER_ENV_STEPS.labels(ns),
                   "eval": metrics.LEARNER_EVAL_RETURN.labels(ns),
                   "openl_image": metrics.LEARNER_OPENLOOP_IMAGE_MSE.labels(ns),
                   "openl_reward": metrics.LEARNER_OPENLOOP_REWARD_ERROR.labels(ns)}
        self.last_metrics: dict[str, float] = {}
        self.started = time.perf_counter()
        self._rates: list[tuple[float, int, int]] = []  # (time, env steps, updates)

    # -- pieces --------------------------------------------------------------------------------
    def publish(self) -> None:
        version, state = self.learner.get_weights("policy")
        _, seconds = self.weights.publish(version, state)
        metrics.LEARNER_BROADCAST.labels(self.spec.namespace).observe(seconds)
        metrics.LEARNER_POLICY_VERSION.labels(self.spec.namespace).set(version)

    def env_steps(self) -> int:
        return self.control.counters()["env_steps"]

    def _maybe_switch(self, env_steps: int) -> None:
        d = self.cfg.distraction
        if self.schedule.switch_due(env_steps, self.learner.scheme):
            self.learner.scheme = d.switch_to
            self.control.set("scheme", d.switch_to)
            self.progress(f"env step {env_steps}: every env switches to colour scheme "
                          f"{d.switch_to}")

    # -- evaluation (off the learner) ---------------------------------------------------------
    def _start_evaluator(self, action_dim: int) -> None:
        """The evaluation actor (learner/evaluator.py) when this runs inside Ray and
        `runtime.eval_actor` is on; otherwise evaluations run here, on the same snapshot."""
        self._evaluator, self._local_evaluator, self._pending = None, None, []
        self._action_dim, self._submitted = action_dim, len(self.evals)
        if not self.cfg.runtime.eval_actor or not self.cfg.train.eval_episodes:
            return
        try:
            import ray
        except ImportError:
            return
        if not ray.is_initialized():
            return
        # On the learner's node where it fits: it writes open-loop images into the run folder.
        from ray.util import get_current_placement_group
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from learner.evaluator import Evaluator

        opts = {"num_cpus": 1, "max_restarts": 2, "max_task_retries": 1, "max_concurrency": 1}
        if get_current_placement_group() is None:  # in a run's placement group it joins that
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=True)
        self._evaluator = ray.remote(Evaluator).options(**opts).remote(
            self.cfg.to_dict(), action_dim, str(self.run_dir), 1)

    def evaluate(self, env_steps: int, point: int, wait: bool = False) -> None:
        """Evaluate at grid `point` on a snapshot of the weights now, in the scheme in force:
        handed to the evaluation actor (training goes on; `collect_evaluations` records the
        rows in order), or run here when there is none or `wait`."""
        from learner.evaluator import evaluation_snapshot

        if not self.cfg.train.eval_episodes:
            return
        snapshot = evaluation_snapshot(
            self.learner, point=point, env_steps=env_steps, scheme=self.learner.scheme,
            seed=self.cfg.train.seed + 10_000 + self._submitted)
        snapshot["wall_seconds"] = time.perf_counter() - self.started
        self._submitted += 1
        if self._evaluator is not None:
            self._pending.append((snapshot, self._evaluator.evaluate.remote(snapshot)))
        else:
            self._pending.append((snapshot, None))
        if wait or self._evaluator is None:
            self.collect_evaluations(block=True)

    def collect_evaluations(self, block: bool = False, timeout: float = 1800.0) -> int:
        """Record finished evaluations, oldest first; returns how many."""
        done = 0
        while self._pending:
            snapshot, ref = self._pending[0]
            if ref is None:
                row = self._evaluate_here(snapshot)
            else:
                import ray

                ready, _ = ray.wait([ref], timeout=timeout if block else 0)
                if not ready:
                    break
                try:
                    row = ray.get(ref)
                except Exception as err:  # noqa: BLE001 - the actor died twice: do it here
                    self.progress(f"learner: the evaluation actor failed ({type(err).__name__}); "
                                  f"evaluating env step {snapshot['env_steps']} here")
                    row = self._evaluate_here(snapshot)
            self._pending.pop(0)
            self._record_eval({**row, "wall_seconds": round(snapshot["wall_seconds"], 3)})
            done += 1
        return done

    def _evaluate_here(self, snapshot: dict) -> dict:
        if self._local_evaluator is None:
            from learner.evaluator import Evaluator

            self._local_evaluator = Evaluator(self.cfg.to_dict(), self._action_dim, self.run_dir)
        return self._local_evaluator.evaluate(snapshot)

    def _record_eval(self, row: dict) -> None:
        self.evals.append(row)
        append_csv(self.run_dir / "eval.csv", row)
        self._m["eval"].set(row["return_mean"])
        if row.get("openl_image_mse") is not None:
            self._m["openl_image"].set(row["openl_image_mse"])
            self._m["openl_reward"].set(row["openl_reward_mae"])
        self.progress(f"eval at env step {row['env_steps']}: return {row['return_mean']:.1f} "
                      f"(scheme {row['scheme']}, {row['updates']} updates){openl_note(row)}")
        self.write_summary()

    def collect_episodes(self) -> int:
        """Append the training episodes the actors recorded since the last call to
        ``episodes.csv``; returns how many."""
        new = self.control.episodes(self._episodes_after)
        for entry_id, fields in new:
            append_episode(self.run_dir, {**fields, "id": entry_id})
        if new:
            self._episodes_after = new[-1][0]
        return len(new)

    def checkpoint(self, env_steps: int) -> None:
        self.learner.save(self.run_dir / CHECKPOINT, extra={"schedule": self.schedule.state()})
        if self.cfg.replay.persistence == "snapshot":
            self.sampler.snapshot()

    def train_on(self, batch: dict[str, np.ndarray], agent_steps: int) -> dict[str, float]:
        # The update that train.csv logs also measures the distillation's gradient share.
        out = self.learner.update(batch, agent_step=agent_steps,
                                  diagnostics=(self.learner.updates + 1) % 10 == 0)
        self._m["updates"].inc()
        self._m["duration"].observe(out["update_seconds"])
        for lag in self.learner.version - 1 - batch["policy_version"][:, -1]:
            self._m["lag"].observe(max(int(lag), 0))
        self.publish()
        if self.learner.updates % 10 == 0:
            append_csv(self.run_dir / "train.csv", {"agent_steps": agent_steps, **{
                k: round(v, 6) for k, v in out.items()}})
        return out

    # -- the loop ------------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> dict[str, Any]:
        cfg, stop = self.cfg, stop or threading.Event()
        if cfg.replay.sample_workers:  # sampler processes, batches in shared memory
            prefetcher = SamplerPool(self.spec, cfg.replay.sample_workers, cfg.train.batch_size,
                                     cfg.train.batch_length,
                                     seed=cfg.train.seed + self.learner.updates,
                                     cache_chunks=self.sampler.cache_chunks,
                                     depth=max(cfg.replay.prefetch, 1), patient=True)
            self.progress(f"learner: {cfg.replay.sample_workers} sampler processes")
        else:
            prefetcher = Prefetcher(self.sampler, cfg.train.batch_size, cfg.train.batch_length,
                                    depth=max(cfg.replay.prefetch, 1), patient=True)
        last_log, initial_done = time.perf_counter(), self.learner.updates > 0
        idle_since = 0.0
        try:
            while not stop.is_set():
                if time.monotonic() - self._lease_kept > 5.0:
                    self.lease.keep()
                    self._lease_kept = time.monotonic()
                counters = self.control.counters()
                env_steps = counters["env_steps"]
                self._m["env_steps"].set(env_steps)
                if env_steps >= cfg.train.steps:
                    # The actors stop; finish the updates this much data is owed at the train
                    # ratio (they ran ahead by up to replay.tolerance), then stop.
                    if self.learner.updates >= self.owed_updates(counters["agent_steps"]):
                        break
                    if idle_since and time.perf_counter() - idle_since > 30:
                        break  # the limiter allows no more samples: nothing left to train on
                self._maybe_switch(env_steps)
                if (point := self.schedule.eval_due(env_steps)) is not None:
                    self.evaluate(env_steps, point)
                if self.schedule.checkpoint_due(env_steps):
                    self.checkpoint(env_steps)
                batch = prefetcher.get(timeout=0.5)
                if batch is None:
                    idle_since = idle_since or time.perf_counter()
                    continue  # the limiter holds us back; look at the stop flag and counters
                idle_since = 0.0
                if self._pending:
                    self.collect_evaluations()
                repeats = 1 if initial_done else max(cfg.train.pretrain_updates, 1)
                for _ in range(repeats):
                    self.last_metrics = self.train_on(batch, counters["agent_steps"])
                    if repeats > 1:
                        batch = prefetcher.get(timeout=5.0) or batch
                initial_done = True
                if time.perf_counter() - last_log > self.log_every:
                    last_log = time.perf_counter()
                    self.collect_episodes()
                    self.progress(self.status_line(env_steps, counters["agent_steps"]))
        finally:
            prefetcher.close()
        return self.finish()

    def owed_updates(self, agent_steps: int) -> int:
        """Updates the train ratio asks for after `agent_steps`: the initial ones, then one per
        `train.train_every` agent steps past the prefill."""
        t = self.cfg.train
        return t.pretrain_updates + max(agent_steps - t.prefill, 0) // t.train_every

    def status_line(self, env_steps: int | None = None, agent_steps: int | None = None) -> str:
        env_steps = self.env_steps() if env_steps is None else env_steps
        now = time.perf_counter()
        self._rates.append((now, env_steps, self.learner.updates))
        del self._rates[:-6]  # the rates of the last few progress lines
        owed = None if agent_steps is None else self.owed_updates(agent_steps)
        return progress_line(self.cfg.train.steps, env_steps, self.learner.updates, owed,
                             self._rates[0], self._rates[-1], self.last_metrics,
                             version=self.learner.version)

    def finish(self) -> dict[str, Any]:
        env_steps = self.env_steps()
        if env_steps >= self.cfg.train.steps:
            self.control.set("done", "1")
            if (point := self.schedule.final_eval()) is not None:
                self.evaluate(env_steps, point)
        self.collect_evaluations(block=True)  # every scheduled evaluation is in eval.csv
        self.checkpoint(env_steps)
        summary = self.write_summary()
        self.lease.release()
        return summary

    def write_summary(self) -> dict[str, Any]:
        self.collect_episodes()
        return write_summary(
            self.run_dir, self.cfg, self.evals, namespace=self.spec.namespace,
            updates=self.learner.updates, policy_version=self.learner.version,
            scheme=self.learner.scheme, counters=self.control.counters(),
            replay=self.sampler.stats(), teacher=self.learner.teacher is not None,
            wall_seconds=time.perf_counter() - self.started)

    def stats(self) -> dict[str, Any]:
        return {"updates": self.learner.updates, "version": self.learner.version,
                "scheme": self.learner.scheme, "env_steps": self.env_steps(),
                "evaluations": len(self.evals),
                "last_eval": self.evals[-1]["return_mean"] if self.evals else None}


def progress_line(total_steps: int, env_steps: int, updates: int, owed: int | None,
                  then: tuple[float, int, int], now: tuple[float, int, int],
                  metrics: dict[str, float], version: int | None = None) -> str:
    """The learner's progress line. `then`/`now` are (seconds, env steps, updates) of an earlier
    and this line: their difference gives the recent rates and the ETA. Once the actors have
    their `total_steps`, the learner trains the updates still owed at the train ratio (`owed`
    in all), and the line says so with that tail's ETA."""
    dt = max(now[0] - then[0], 1e-9)
    step_rate, update_rate = (now[1] - then[1]) / dt, (now[2] - then[2]) / dt
    loss = f"model loss {metrics.get('model_loss', float('nan')):.1f}"
    ver = f"  version {version}" if version is not None else ""
    if owed is not None and env_steps >= total_steps:
        left = max(owed - updates, 0)
        eta = (f", ETA {left / update_rate / 60:.1f} min" if update_rate > 0 and left
               else "")
        return (f"env steps done ({env_steps}/{total_steps}); training the updates still owed "
                f"at the train ratio: {updates}/{owed}{eta}  ({update_rate:.2f} updates/s){ver}"
                f"  {loss}")
    eta = (f"  ETA {(total_steps - env_steps) / step_rate / 60:.0f} min" if step_rate > 0
           else "")
    return (f"env step {env_steps}/{total_steps}  updates {updates}{ver}  {loss}"
            f"  distill eta {metrics.get('eta', 0.0):.3f}  {step_rate:.0f} env steps/s{eta}")
