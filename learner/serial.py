"""The serial runner: env, in-process replay, learner, periodic evaluation, all in one process.

    diswm train --config debug --serial [--teacher CKPT] [--resume RUN_DIR]

It builds the same components as the distributed job (Policy, SequenceBuffer, Learner) and
drives them in one loop, so a CPU run, a test and a debugging session need no Ray or Redis.
It writes the run folder of `diswm/runfolder.py`, as the distributed learner does.

Each stored step follows DreamerV2: the env observation plus ``action`` = the action that led to
it (zeros on ``is_first``) plus ``policy_version``. Resume restores the learner exactly (weights,
optimizers, counters, eta position, scheme, RNG); the replay is not checkpointed, so a resumed
run refills it with `prefill` steps of the restored policy before training again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from diswm.agent import Policy
from diswm.agent.teacher import FIELD as TEACHER_FIELD
from diswm.agent.teacher import TeacherLatents, stores_teacher_latents
from diswm.config import Config
from diswm.envs import make_env
from diswm.runfolder import CHECKPOINT, append_csv, append_episode, private_dir, write_summary
from learner.evaluator import Evaluator, ensure_random_reference, evaluation_snapshot, openl_note
from learner.learner import Learner
from learner.schedule import RunSchedule, legacy_schedule
from replay_service.buffer import SequenceBuffer


class SerialRunner:
    def __init__(self, cfg: Config, run_dir: str | Path, *, resume: bool = False,
                 progress: Callable[[str], None] = print, log_every: int = 10):
        self.cfg, self.run_dir, self.progress, self.log_every = cfg, Path(run_dir), progress, log_every
        private_dir(self.run_dir)
        ensure_random_reference(cfg, self.run_dir, progress=progress)
        self.env = make_env(cfg.env, cfg.distraction, seed=cfg.train.seed)
        self.action_dim = int(self.env.act_space.shape[0])
        ckpt = self.run_dir / CHECKPOINT
        self.counters = {"env_steps": 0, "agent_steps": 0, "episodes": 0, "switched": 0}
        self.evals: list[dict] = []
        self.schedule = RunSchedule.from_config(cfg)
        self._evaluator = None  # built at the first evaluation
        if resume:
            self.learner, extra = Learner.from_checkpoint(ckpt, log=progress)
            self.counters.update({k: int(v) for k, v in extra["counters"].items()
                                  if k in self.counters})
            self.schedule.load(extra.get("schedule") or legacy_schedule(cfg, extra["counters"]))
            self.evals = json.loads((self.run_dir / "metrics.json").read_text())["evaluations"]
        else:
            cfg.save(self.run_dir / "config.yaml")
            self.learner = Learner(cfg, self.action_dim, log=progress)
        self.replay = SequenceBuffer(cfg.replay.capacity, seed=cfg.train.seed,
                                     chunk_length=cfg.replay.chunk_length)
        self.policy = Policy(cfg, self.action_dim, 1, mode="explore")
        self.teacher = (TeacherLatents(self.learner.teacher)
                        if stores_teacher_latents(cfg) and self.learner.teacher is not None
                        else None)
        self.policy.load_weights(*self.learner.get_weights("policy"))
        self.rng = np.random.default_rng([cfg.train.seed, self.counters["agent_steps"]])
        self.prefill_until = self.counters["agent_steps"] + cfg.train.prefill
        if self.counters["switched"] and cfg.distraction.enabled:
            self.env.set_scheme(cfg.distraction.switch_to)

    # -- the loop ---------------------------------------------------------------------------
    def _store(self, obs: dict, action: np.ndarray) -> None:
        step = {**obs, "action": action.astype(np.float32),
                "policy_version": np.int64(self.policy.version)}
        if self.teacher is not None:  # once per frame, not once per sampled frame
            step[TEACHER_FIELD] = self.teacher(obs["image"][None])[0]
        self.replay.add("serial/env0", step)

    def _train(self, n: int) -> dict[str, float]:
        cfg, metrics = self.cfg.train, {}
        for _ in range(n):
            batch = self.replay.sample(cfg.batch_size, cfg.batch_length)
            metrics = self.learner.update(  # the logged update measures the distill share
                batch, agent_step=self.counters["agent_steps"],
                diagnostics=(self.learner.updates + 1) % self.log_every == 0)
            if self.learner.updates % self.log_every == 0:
                append_csv(self.run_dir / "train.csv", {
                    "env_steps": self.counters["env_steps"], "agent_steps":
                    self.counters["agent_steps"], **{k: round(v, 6) for k, v in metrics.items()}})
        self.policy.load_weights(*self.learner.get_weights("policy"))
        return metrics

    def run(self, stop_at: int | None = None) -> dict[str, Any]:
        """Train until `train.steps` env steps (or `stop_at`, which leaves a resumable run)."""
        cfg, c = self.cfg, self.counters
        end = cfg.train.steps if stop_at is None else min(stop_at, cfg.train.steps)
        start, last_log = time.perf_counter(), time.perf_counter()
        trained_initial = False
        obs, episode_return = self.env.reset(), 0.0
        self._store(obs, np.zeros(self.action_dim, np.float32))
        metrics: dict[str, float] = {}
        try:
            while c["env_steps"] < end:
                if self.schedule.switch_due(c["env_steps"], self.learner.scheme):
                    self.env.set_scheme(cfg.distraction.switch_to)
                    self.learner.scheme, c["switched"] = cfg.distraction.switch_to, 1
                    self.progress(f"env step {c['env_steps']}: colour scheme -> "
                                  f"{cfg.distraction.switch_to}")
                if c["agent_steps"] < self.prefill_until:
                    action = self.rng.uniform(-1, 1, self.action_dim).astype(np.float32)
                else:
                    action = self.policy({"image": obs["image"][None], "is_first": [obs["is_first"]]})[0]
                before = self.env.episode_env_steps
                obs = self.env.step(action)
                episode_return += float(obs["reward"])
                c["env_steps"] += self.env.episode_env_steps - before
                c["agent_steps"] += 1
                self._store(obs, action)
                if obs["is_last"]:
                    c["episodes"] += 1
                    append_episode(self.run_dir, {
                        "env_steps": c["env_steps"], "return": round(episode_return, 4),
                        "length": self.env.episode_env_steps, "policy_version":
                        self.policy.version, "actor": 0, "env": 0,
                        "scheme": self.learner.scheme})
                    episode_return = 0.0
                    obs = self.env.reset()
                    self._store(obs, np.zeros(self.action_dim, np.float32))
                if c["agent_steps"] >= self.prefill_until and len(self.replay) >= cfg.train.batch_length:
                    if not trained_initial:
                        metrics = self._train(cfg.train.pretrain_updates)
                        trained_initial = True
                    elif c["agent_steps"] % cfg.train.train_every == 0:
                        metrics = self._train(1)
                if (point := self.schedule.eval_due(c["env_steps"])) is not None:
                    self._evaluate(point)
                if self.schedule.checkpoint_due(c["env_steps"]):
                    self._checkpoint()
                if time.perf_counter() - last_log > 10 and metrics:
                    last_log = time.perf_counter()
                    self.progress(f"env step {c['env_steps']}/{cfg.train.steps}  updates "
                                  f"{self.learner.updates}  model loss {metrics['model_loss']:.1f}  "
                                  f"eta {metrics['eta']:.3f}  {c['env_steps'] / (last_log - start):.0f}"
                                  " env steps/s")
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM: keep what was learned to --resume from
            self._checkpoint()
            self.progress(f"stopped at env step {c['env_steps']}; checkpoint "
                          f"{self.run_dir / CHECKPOINT} (the replay is not kept)")
            raise
        if end == cfg.train.steps and (point := self.schedule.final_eval()) is not None:
            self._evaluate(point)
        self._checkpoint()
        self.env.close()
        summary = self._write_summary(time.perf_counter() - start)
        return summary

    def _evaluate(self, point: int) -> None:
        """The distributed learner's evaluation (learner/evaluator.py), run here: a snapshot
        of the weights, seeded episodes in a forked RNG (training's random streams untouched)."""
        cfg, c = self.cfg, self.counters
        if cfg.train.eval_episodes == 0:
            return
        if self._evaluator is None:
            self._evaluator = Evaluator(cfg.to_dict(), self.action_dim, self.run_dir)
        snapshot = evaluation_snapshot(self.learner, point=point, env_steps=c["env_steps"],
                                       scheme=self.learner.scheme,
                                       seed=cfg.train.seed + 10_000 + len(self.evals))
        row = self._evaluator.evaluate(snapshot)
        self.evals.append(row)
        append_csv(self.run_dir / "eval.csv", row)
        self.progress(f"eval at env step {c['env_steps']}: return {row['return_mean']:.1f} "
                      f"(scheme {row['scheme']}, {self.learner.updates} updates)"
                      f"{openl_note(row)}")
        self._write_summary(None)

    def _checkpoint(self) -> None:
        self.learner.save(self.run_dir / CHECKPOINT, extra={
            "counters": dict(self.counters), "schedule": self.schedule.state()})

    def _write_summary(self, wall: float | None) -> dict[str, Any]:
        return write_summary(self.run_dir, self.cfg, self.evals, counters=dict(self.counters),
                             updates=self.learner.updates, wall_seconds=wall,
                             teacher=bool(self.learner.teacher is not None))
