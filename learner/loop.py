"""The training loop, once, for the serial and the distributed run.

    loop = TrainLoop(cfg, run_dir, action_dim, resume=..., progress=print)
    summary = loop.run(source)            # until train.steps env steps (or stop / stop_at)

The loop owns what both runs share: resuming from ``checkpoints/latest.pt`` (weights, optimizers,
counters, the schedule), the run's schedule (learner/schedule.py: the colour-scheme switch,
evaluations and checkpoints on a fixed grid of env steps), the learner's updates and their
``train.csv`` rows (every `train.log_every` updates, the logged update measuring the
distillation's gradient share), evaluations (learner/evaluator.py, here or in an evaluation
actor), progress lines (every `train.progress_every` seconds), the final evaluation and the
run folder's summary (diswm/runfolder.py).

What differs is the `BatchSource`: where env steps come from and where batches come from.

- `learner/serial.py`: one process; `advance` steps the env once with the policy, the replay is
  an in-process buffer, and the updates follow the train ratio exactly (the initial updates
  once the prefill is stored, then one per `train.train_every` agent steps).
- `learner/service.py`: `advance` reads the run's counters from Redis (the actors step the envs),
  batches come from the replay's prefetcher as its rate limiter grants them, and every update
  publishes the new policy version.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from diswm.checkpoints import CheckpointSet
from diswm.config import Config
from diswm.runfolder import CHECKPOINT, append_csv, private_dir, write_summary
from diswm.tracking import Tracker
from learner.evaluator import EVAL_VIDEO, MEDIA, OPENLOOP_PNG, Evaluations, openl_note
from learner.learner import Learner
from learner.schedule import RunSchedule, legacy_schedule

Counters = dict[str, int]  # at least "env_steps" and "agent_steps"


class BatchSource:
    """Where a run's env steps and batches come from (the serial and the distributed run).
    A source defines the first five; the hooks after them do nothing unless it needs them."""

    def counters(self) -> Counters:
        """The run's counters now (no side effects)."""
        raise NotImplementedError

    def advance(self) -> Counters:
        """Move the run on (serial: one agent step in the env; distributed: read the counters
        the actors keep) and return its counters."""
        raise NotImplementedError

    def finished(self, end: int, counters: Counters, updates: int) -> bool:
        """Whether the loop stops: the run reached `end` env steps (and, distributed, trained
        the updates that much data is owed)."""
        raise NotImplementedError

    def batches(self, counters: Counters) -> Iterable[dict[str, np.ndarray]]:
        """The batches to train on now (none while the train ratio holds the learner back)."""
        raise NotImplementedError

    def set_scheme(self, scheme: str) -> None:
        """Switch every env to colour scheme `scheme`."""
        raise NotImplementedError

    def summary_fields(self) -> dict[str, Any]:
        """The source's part of ``metrics.json`` (its counters and what else it knows)."""
        return {"counters": self.counters()}

    def after_update(self, batch: dict[str, np.ndarray], out: dict[str, float]) -> None:
        """After each update (distributed: publish the policy, update metrics)."""

    def owed_updates(self, counters: Counters) -> int | None:
        """Updates the train ratio asks for at `counters` (for the progress line), if known."""
        return None

    def sync(self) -> None:
        """Bring the run folder up to date before a progress line or a summary (distributed:
        the training episodes the actors recorded)."""

    def on_evaluation(self, row: dict[str, Any]) -> None:
        """An evaluation's row was recorded."""

    def on_checkpoint(self) -> None:
        """A checkpoint was written."""

    def saved(self) -> None:
        """The run folder's files changed (a checkpoint, a summary): persist them where the run
        keeps them (distributed with a storage: push them, diswm/storage.py)."""

    def close(self) -> None:
        """The loop ended (a prefetcher's thread or processes stop here)."""

    def finish(self, reached_end: bool) -> None:
        """The run is over: before its final evaluation and summary."""

    def release(self) -> None:
        """After the final summary (the env, the namespace's lease)."""


class TrainLoop:
    def __init__(self, cfg: Config, run_dir: str | Path, action_dim: int, *, resume: bool,
                 progress: Callable[[str], None] = print,
                 log: Callable[[str], None] | None = None, remote_evaluations: bool = False,
                 pretrained: dict | None = None):
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        log = log or progress
        private_dir(self.run_dir)
        self.schedule = RunSchedule.from_config(cfg)
        self.evals: list[dict] = []
        self.saved_counters: Counters = {}  # the counters of the checkpoint resumed from
        self.ckpts = CheckpointSet(self.run_dir / CHECKPOINT.parent, cfg.train.keep_checkpoints)
        self._saved_at: tuple[int, int] | None = None  # (updates, env steps) of the last save
        self.resumed = bool(resume)
        if resume:
            self.learner, extra, ckpt = resume_newest(self.ckpts, log)
            self.saved_counters = {k: int(v) for k, v in extra.get("counters", {}).items()}
            self.schedule.load(extra.get("schedule") or legacy_schedule(
                cfg, extra.get("counters") or extra.get("next", {})))
            summary = self.run_dir / "metrics.json"
            if summary.exists():
                self.evals = json.loads(summary.read_text()).get("evaluations", [])
            log(f"resumed from {ckpt} at update {self.learner.updates}")
        else:
            self.learner = Learner(cfg, action_dim, pretrained=pretrained, log=log)
        self.resumed_at = self.learner.updates if resume else None  # updates of the checkpoint
        self.evaluations = Evaluations(cfg, action_dim, self.run_dir, submitted=len(self.evals),
                                       remote=remote_evaluations)
        # TensorBoard (and W&B): a resumed run drops what was logged after its checkpoint
        self.tracker = Tracker.open(cfg, self.run_dir, resume_step=(
            self.saved_counters.get("env_steps") if resume else None))
        self.source: BatchSource | None = None
        self.last_metrics: dict[str, float] = {}
        self.counters: Counters = {}  # the run's counters as the loop read them last
        self.started = time.perf_counter()
        self._rates: list[tuple[float, int, int]] = []  # (time, env steps, updates)

    # -- the loop ------------------------------------------------------------------------------
    def run(self, source: BatchSource, stop: threading.Event | None = None,
            stop_at: int | None = None) -> dict[str, Any]:
        """Train until `train.steps` env steps (or `stop_at`, or `stop`: both leave a resumable
        run), then evaluate at the end, checkpoint and write the summary."""
        cfg, self.source = self.cfg, source
        end = cfg.train.steps if stop_at is None else min(stop_at, cfg.train.steps)
        last_log = time.perf_counter()
        counters = self.counters = source.counters()
        try:
            while not (stop is not None and stop.is_set()):
                if source.finished(end, counters, self.learner.updates):
                    break
                counters = self.counters = source.advance()
                env_steps = counters["env_steps"]
                if self.schedule.switch_due(env_steps, self.learner.scheme):
                    self.learner.scheme = cfg.distraction.switch_to
                    source.set_scheme(cfg.distraction.switch_to)
                    self.progress(f"env step {env_steps}: every env switches to colour scheme "
                                  f"{cfg.distraction.switch_to}")
                for batch in source.batches(counters):
                    self.collect_evaluations()
                    self.last_metrics = self.update(batch, counters)
                # After this step's updates: an evaluation at a grid point sees them.
                if (point := self.schedule.eval_due(env_steps)) is not None:
                    self.evaluate(env_steps, point)
                if self.schedule.checkpoint_due(env_steps):
                    self.checkpoint()
                if time.perf_counter() - last_log > cfg.train.progress_every:
                    last_log = time.perf_counter()
                    source.sync()
                    self.progress(self.status_line(counters))
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM in one process: keep what was learned
            self.checkpoint()
            self.progress(f"stopped at env step {source.counters()['env_steps']}; checkpoint "
                          f"{self.run_dir / CHECKPOINT}")
            raise
        finally:
            source.close()
        return self.finish()

    def update(self, batch: dict[str, np.ndarray], counters: Counters) -> dict[str, float]:
        every, before = self.cfg.train.log_every, self.learner.updates
        out = self.learner.update(batch, agent_step=counters["agent_steps"],
                                  diagnostics=(self.learner.updates + 1) % every == 0)
        self.source.after_update(batch, out)
        if self.learner.updates != before and self.learner.updates % every == 0:
            row = {"env_steps": counters["env_steps"], "agent_steps": counters["agent_steps"],
                   "updates": self.learner.updates, **{k: round(v, 6) for k, v in out.items()}}
            append_csv(self.run_dir / "train.csv", row)
            self.tracker.scalars("train", row, counters["env_steps"])
        return out

    def finish(self) -> dict[str, Any]:
        env_steps = self.source.counters()["env_steps"]
        reached = env_steps >= self.cfg.train.steps
        self.source.finish(reached)
        if reached and (point := self.schedule.final_eval()) is not None:
            self.evaluate(env_steps, point)
        self.collect_evaluations(block=True)  # every scheduled evaluation is in eval.csv
        self.checkpoint()
        summary = self.write_summary()
        self.tracker.close()
        self.source.release()
        return summary

    # -- evaluations, checkpoints, the summary -------------------------------------------------
    def evaluate(self, env_steps: int, point: int, wait: bool = False) -> None:
        """Evaluate at grid `point` on a snapshot of the weights now, in the scheme in force:
        in the evaluation actor (training goes on; the rows are recorded in order as they
        finish) or here."""
        if self.cfg.train.eval_episodes:
            self.checkpoint()  # the weights evaluated, kept: best.pt if they score best
        self.evaluations.submit(self.learner, point=point, env_steps=env_steps,
                                wall_seconds=time.perf_counter() - self.started)
        if wait or self.evaluations.actor is None:
            self.collect_evaluations(block=True)

    def collect_evaluations(self, block: bool = False) -> int:
        rows = self.evaluations.collect(block=block, progress=self.progress)
        for row in rows:
            media = row.pop(MEDIA, {})
            self.evals.append(row)
            append_csv(self.run_dir / "eval.csv", row)
            self.tracker.scalars("eval", row, row["env_steps"])
            if OPENLOOP_PNG in media:
                self.tracker.image("eval/openloop", media[OPENLOOP_PNG], row["env_steps"])
            if EVAL_VIDEO in media:
                self.tracker.video("eval/episode", media[EVAL_VIDEO]["gif"], row["env_steps"])
            if self.source is not None:
                self.source.on_evaluation(row)
            best = self.ckpts.offer(row["updates"], row["env_steps"], row["return_mean"])
            self.progress(f"eval at env step {row['env_steps']}: return "
                          f"{row['return_mean']:.1f} (scheme {row['scheme']}, {row['updates']} "
                          f"updates){openl_note(row)}{'; the best so far: best.pt' if best else ''}")
            self.write_summary()
        return len(rows)

    def checkpoint(self) -> None:
        counters = self.source.counters() if self.source is not None else {}
        at = (self.learner.updates, int(counters.get("env_steps", -1)))
        if at == self._saved_at:
            return  # nothing changed since the last one (an evaluation's, at this step)
        extra = {"counters": dict(counters), "schedule": self.schedule.state()}
        self.ckpts.save(lambda path: self.learner.save(path, extra=extra), self.learner.updates,
                        protect=self.evaluations.in_flight())
        self._saved_at = at
        if self.source is not None:
            self.source.on_checkpoint()
            self.source.saved()

    def write_summary(self) -> dict[str, Any]:
        fields = {}
        if self.source is not None:
            self.source.sync()
            fields = self.source.summary_fields()
        summary = write_summary(
            self.run_dir, self.cfg, self.evals, updates=self.learner.updates,
            policy_version=self.learner.version, scheme=self.learner.scheme,
            teacher=self.learner.teacher is not None,
            wall_seconds=time.perf_counter() - self.started, **fields)
        if self.source is not None:
            self.source.saved()
        return summary

    def status_line(self, counters: Counters) -> str:
        now = time.perf_counter()
        self._rates.append((now, counters["env_steps"], self.learner.updates))
        del self._rates[:-6]  # the rates of the last few progress lines
        owed = self.source.owed_updates(counters) if self.source is not None else None
        line = progress_line(self.cfg.train.steps, counters["env_steps"], self.learner.updates,
                             owed, self._rates[0], self._rates[-1], self.last_metrics,
                             version=self.learner.version)
        if self.learner.skipped_updates:
            line += f"  ({self.learner.skipped_updates} updates skipped: loss not finite)"
        return line


def resume_newest(ckpts: CheckpointSet, log: Callable[[str], None]) -> tuple[Learner, dict, Path]:
    """The learner of the newest checkpoint that loads (latest.pt, then the numbered ones,
    newest first), its `extra` and its path; a damaged one is skipped and named. ValueError
    when none loads."""
    candidates = ckpts.candidates()
    errors = []
    for path in candidates:
        try:
            learner, extra = Learner.from_checkpoint(path, log=log)
        except ValueError as err:
            errors.append(str(err))
            log(f"cannot resume from {path}: {err}; trying the checkpoint before it")
            continue
        if errors:
            log(f"resuming from {path}, the newest checkpoint that loads")
        return learner, extra, path
    if len(errors) == 1:
        raise ValueError(errors[0])  # the only checkpoint there is: its own one-line reason
    raise ValueError(f"none of the {len(errors)} checkpoints loads; the newest: {errors[0]}"
                     if errors else f"no checkpoint in {ckpts.folder}")


def owed_updates(cfg: Config, agent_steps: int) -> int:
    """Updates the train ratio asks for after `agent_steps`: the initial ones, then one per
    `train.train_every` agent steps past the prefill."""
    t = cfg.train
    return t.pretrain_updates + max(agent_steps - t.prefill, 0) // t.train_every


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
