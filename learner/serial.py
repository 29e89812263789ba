"""The serial runner: env, in-process replay, learner, periodic evaluation, all in one process.

    diswm train --config debug --serial [--teacher CKPT] [--resume RUN_DIR]

It runs the training loop the distributed learner runs (learner/loop.py) with a `SerialSource`:
the env, the policy and an in-process replay (`SequenceBuffer`) in this process, so a CPU run, a
test and a debugging session need no Ray or Redis. It writes the run folder of
`diswm/runfolder.py`, as the distributed learner does.

Each stored step follows DreamerV2: the env observation plus ``action`` = the action that led to
it (zeros on ``is_first``) plus ``policy_version``. Resume restores the learner exactly (weights,
optimizers, counters, eta position, scheme, RNG); the replay is not checkpointed, so a resumed
run refills it with `prefill` steps of the restored policy before training again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from diswm.agent import Policy
from diswm.agent.teacher import FIELD as TEACHER_FIELD
from diswm.agent.teacher import TeacherLatents, stores_teacher_latents
from diswm.config import Config
from diswm.envs import make_env
from diswm.runfolder import append_episode, private_dir
from learner.evaluator import ensure_random_reference
from learner.learner import Learner
from learner.loop import BatchSource, Counters, TrainLoop
from replay_service.buffer import SequenceBuffer


class SerialSource(BatchSource):
    """The serial run's `BatchSource`: one env stepped here with the exploring policy (uniform
    actions during the prefill), its steps stored in an in-process replay, and the updates of
    the train ratio: `train.pretrain_updates` once the prefill is stored, then one every
    `train.train_every` agent steps."""

    def __init__(self, cfg: Config, learner: Learner, run_dir: Path, env,
                 saved: Counters | None = None):
        self.cfg, self.learner, self.run_dir, self.env = cfg, learner, run_dir, env
        self.action_dim = int(env.act_space.shape[0])
        self.c = {"env_steps": 0, "agent_steps": 0, "episodes": 0, "switched": 0}
        self.c.update({k: int(v) for k, v in (saved or {}).items() if k in self.c})
        self.replay = SequenceBuffer(cfg.replay.capacity, seed=cfg.train.seed,
                                     chunk_length=cfg.replay.chunk_length)
        self.policy = Policy(cfg, self.action_dim, 1, mode="explore")
        self.teacher = (TeacherLatents(learner.teacher)
                        if stores_teacher_latents(cfg) and learner.teacher is not None else None)
        self.policy.load_weights(*learner.get_weights("policy"))
        self._stale = False  # the learner updated since the policy last loaded its weights
        self.rng = np.random.default_rng([cfg.train.seed, self.c["agent_steps"]])
        # The replay is not checkpointed: a resumed run refills it before training again.
        self.prefill_until = self.c["agent_steps"] + cfg.train.prefill
        self.trained_initial = False
        if self.c["switched"] and cfg.distraction.enabled:
            self.env.set_scheme(cfg.distraction.switch_to)
        self.obs, self.episode_return = self.env.reset(), 0.0
        self._store(self.obs, np.zeros(self.action_dim, np.float32))

    def _store(self, obs: dict, action: np.ndarray) -> None:
        step = {**obs, "action": action.astype(np.float32),
                "policy_version": np.int64(self.policy.version)}
        if self.teacher is not None:  # once per frame, not once per sampled frame
            step[TEACHER_FIELD] = self.teacher(obs["image"][None])[0]
        self.replay.add("serial/env0", step)

    # -- BatchSource ---------------------------------------------------------------------------
    def counters(self) -> Counters:
        return dict(self.c)

    def advance(self) -> Counters:
        c, obs = self.c, self.obs
        if c["agent_steps"] < self.prefill_until:
            action = self.rng.uniform(-1, 1, self.action_dim).astype(np.float32)
        else:
            if self._stale:
                self.policy.load_weights(*self.learner.get_weights("policy"))
                self._stale = False
            action = self.policy({"image": obs["image"][None], "is_first": [obs["is_first"]]})[0]
        before = self.env.episode_env_steps
        obs = self.env.step(action)
        self.episode_return += float(obs["reward"])
        c["env_steps"] += self.env.episode_env_steps - before
        c["agent_steps"] += 1
        self._store(obs, action)
        if obs["is_last"]:
            c["episodes"] += 1
            append_episode(self.run_dir, {
                "env_steps": c["env_steps"], "return": round(self.episode_return, 4),
                "length": self.env.episode_env_steps, "policy_version": self.policy.version,
                "actor": 0, "env": 0, "scheme": self.learner.scheme})
            self.episode_return = 0.0
            obs = self.env.reset()
            self._store(obs, np.zeros(self.action_dim, np.float32))
        self.obs = obs
        return dict(c)

    def finished(self, end: int, counters: Counters, updates: int) -> bool:
        return counters["env_steps"] >= end

    def batches(self, counters: Counters) -> Iterator[dict[str, np.ndarray]]:
        t = self.cfg.train
        if counters["agent_steps"] < self.prefill_until or len(self.replay) < t.batch_length:
            return
        if not self.trained_initial:
            self.trained_initial, n = True, t.pretrain_updates
        elif counters["agent_steps"] % t.train_every == 0:
            n = 1
        else:
            return
        for _ in range(n):
            yield self.replay.sample(t.batch_size, t.batch_length)

    def after_update(self, batch: dict[str, np.ndarray], out: dict[str, float]) -> None:
        self._stale = True

    def set_scheme(self, scheme: str) -> None:
        self.env.set_scheme(scheme)
        self.c["switched"] = 1

    def release(self) -> None:
        self.env.close()


class SerialRunner:
    """A serial run: `TrainLoop` over a `SerialSource`, in this process."""

    def __init__(self, cfg: Config, run_dir: str | Path, *, resume: bool = False,
                 progress: Callable[[str], None] = print):
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        private_dir(self.run_dir)
        ensure_random_reference(cfg, self.run_dir, progress=progress)
        env = make_env(cfg.env, cfg.distraction, seed=cfg.train.seed)
        self.loop = TrainLoop(cfg, self.run_dir, int(env.act_space.shape[0]), resume=resume,
                              progress=progress)
        if not resume:
            cfg.save(self.run_dir / "config.yaml")
        self.learner = self.loop.learner
        self.source = SerialSource(cfg, self.learner, self.run_dir, env,
                                   saved=self.loop.saved_counters)
        self.replay = self.source.replay

    def run(self, stop_at: int | None = None) -> dict[str, Any]:
        """Train until `train.steps` env steps (or `stop_at`, which leaves a resumable run)."""
        return self.loop.run(self.source, stop_at=stop_at)
