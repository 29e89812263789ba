"""An actor's logic, without Ray: K distracted envs, one batched policy, a replay writer.

    worker = ActorWorker(cfg, index=3, spec=spec)
    while not stop.is_set():
        worker.step()          # one batched policy call, one step of every env, steps -> replay
    worker.close()             # flushes partial episodes into the replay

Every `sync_every` steps the worker reports its step counts to the run's control plane and
polls it: a newer policy version is fetched and loaded, and a changed colour scheme is applied
to every env at once. Until the run
has `train.prefill` agent steps the actions are uniform random (DreamerV2's prefill).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import numpy as np

from diswm import metrics
from diswm.agent import Policy
from diswm.agent.teacher import FIELD as TEACHER_FIELD
from diswm.agent.teacher import TeacherLatents, fetch_teacher, stores_teacher_latents
from diswm.broadcast import BadWeights, WeightStore
from diswm.config import Config
from diswm.control import RunControl
from diswm.envs import make_env
from replay_service.client import ReplaySpec, ReplayTimeout, ReplayWriter

log = logging.getLogger(__name__)


class ActorWorker:
    def __init__(self, cfg: Config, index: int, spec: ReplaySpec, *, sync_every: int = 25,
                 incarnation: str | None = None):
        self.cfg, self.index = cfg, index
        self.incarnation = incarnation or uuid.uuid4().hex[:8]
        k = cfg.runtime.envs_per_actor
        # Distinct, reproducible seeds per actor and env (a restart gets new ones: new episodes).
        base = cfg.train.seed * 1_000_003 + index * 1000
        self.envs = [make_env(cfg.env, cfg.distraction, seed=base + j) for j in range(k)]
        self.streams = [f"actor{index}/env{j}/{self.incarnation}" for j in range(k)]
        self.action_dim = int(self.envs[0].act_space.shape[0])
        self.policy = Policy(cfg, self.action_dim, k, mode="explore",
                             compile=cfg.runtime.policy_compile, log=self._say)
        self.stopping = threading.Event()  # set by the shell: blocked inserts give way
        # On a sharded replay actor i writes shard i mod shards: the shards fill evenly.
        self.writer = ReplayWriter(spec, interrupt=self._interrupted, shard=index % spec.shards)
        self.teacher = self._teacher(spec)
        self.weights = WeightStore(self.writer.client, spec.namespace)
        self.control = RunControl(self.writer.client, spec.namespace)
        self.rng = np.random.default_rng([cfg.train.seed, index, int(self.incarnation, 16)])
        self.sync_every = sync_every
        self.scheme = cfg.distraction.scheme
        self.steps = 0
        self.returns = np.zeros(k)
        self.env_steps = 0
        self.episodes = 0
        self._prefill_done = False
        self._unreported = [0, 0, 0]  # env steps, agent steps, episodes not yet in Redis
        label = str(index)
        self._m = {
            "env_steps": metrics.ACTOR_ENV_STEPS.labels(label),
            "agent_steps": metrics.ACTOR_AGENT_STEPS.labels(label),
            "episodes": metrics.ACTOR_EPISODES.labels(label),
            "return": metrics.ACTOR_EPISODE_RETURN.labels(label),
            "last_return": metrics.ACTOR_LAST_RETURN.labels(label),
            "version": metrics.ACTOR_POLICY_VERSION.labels(label),
            "lag": metrics.ACTOR_POLICY_LAG.labels(label),
            "fetch": metrics.ACTOR_WEIGHT_FETCH.labels(label),
            "step": metrics.ACTOR_STEP_DURATION.labels(label),
            "rejected": metrics.ACTOR_WEIGHTS_REJECTED.labels(label),
            "timeouts": metrics.ACTOR_INSERT_TIMEOUTS.labels(label),
        }
        self.weights_rejected = 0  # weights records refused (kept acting with its own)
        self.insert_timeouts = 0  # limiter timeouts (chunks held and retried, never dropped)
        self._refused_version: int | None = None
        self.sync()
        self.obs = [env.reset() for env in self.envs]
        self.prev_actions = np.zeros((k, self.action_dim), np.float32)
        for j, obs in enumerate(self.obs):
            self._store(j, obs, self.prev_actions[j])

    def _say(self, msg: str) -> None:
        """The policy's compile line: a fallback to eager is a warning, the rest information."""
        failed = self.policy.compile_state == "fallback"  # set before the line is said
        log.log(logging.WARNING if failed else logging.INFO, "actor %d: %s", self.index, msg)

    def _teacher(self, spec: ReplaySpec) -> TeacherLatents | None:
        """The frozen teacher, when this run stores its latents (diswm/agent/teacher.py); None
        when it does not, or when the replay already holds steps without them (a run begun
        before they were stored: its learner computes them, as it did)."""
        if not stores_teacher_latents(self.cfg):
            return None
        fields = self.writer.stored_fields()
        if fields is not None and TEACHER_FIELD not in fields:
            log.warning("actor %d: replay %r holds steps without %s; not storing them (the "
                        "learner computes the teacher's latents)", self.index, spec.namespace,
                        TEACHER_FIELD)
            return None
        return fetch_teacher(self.writer.client, spec.namespace, self.cfg,
                             timeout=spec.wait_timeout)

    # -- control plane -----------------------------------------------------------------------
    def report(self) -> None:
        """Add this actor's steps since the last report to the run's global counters."""
        env_steps, agent_steps, episodes = self._unreported
        self.control.add(env_steps=env_steps, agent_steps=agent_steps, episodes=episodes)
        self._unreported = [0, 0, 0]

    def sync(self) -> None:
        """Report counts; pull newer weights and the current colour scheme."""
        self.report()
        try:
            latest = self.weights.version()
            if latest > self.policy.version and latest != self._refused_version:
                start = time.perf_counter()
                self.policy.load_weights(*self.weights.fetch())
                self._m["fetch"].observe(time.perf_counter() - start)
        except (BadWeights, ValueError) as err:
            # A record that fails its checks must not take the actor down: refuse it, count it,
            # say so once per published version, and keep acting with the current weights.
            self.weights_rejected += 1
            self._m["rejected"].inc()
            self._refused_version = latest = self._published_version()
            log.warning("actor %d refused weights version %s (keeps version %d): %s",
                        self.index, latest, self.policy.version, err)
        self._m["version"].set(self.policy.version)
        self._m["lag"].set(max(latest - self.policy.version, 0))
        scheme = self.control.get("scheme", self.scheme)
        if scheme != self.scheme and self.cfg.distraction.enabled:
            for env in self.envs:
                env.set_scheme(scheme)
            self.scheme = scheme
        if not self._prefill_done:
            self._prefill_done = self.control.counters()["agent_steps"] >= self.cfg.train.prefill

    def _published_version(self) -> int:
        try:
            return self.weights.version()
        except BadWeights:
            return -1

    # -- stepping ----------------------------------------------------------------------------
    def _store(self, j: int, obs: dict, action: np.ndarray,
               z_teacher: np.ndarray | None = None) -> None:
        step = {**obs, "action": action, "policy_version": np.int64(self.policy.version)}
        if self.teacher is not None:  # once per frame, here, instead of per sampled frame
            step[TEACHER_FIELD] = (self.teacher(obs["image"][None])[0] if z_teacher is None
                                   else z_teacher)
        try:
            self.writer.add(self.streams[j], step)
        except ReplayTimeout as err:
            # The step is held in the writer (retried by the next insert, stored at close), so
            # a learner that stopped sampling stalls the actor but never loses its steps.
            self.insert_timeouts += 1
            self._m["timeouts"].inc()
            if self.insert_timeouts in (1, 10) or self.insert_timeouts % 100 == 0:
                log.warning("actor %d: %s (%d timeouts; %d steps held, retried)", self.index,
                            err, self.insert_timeouts, self.writer.pending_steps())

    def step(self) -> int:
        """One batched step of every env; returns the env steps taken."""
        start = time.perf_counter()
        if self.steps % self.sync_every == 0:
            self.sync()
        k = len(self.envs)
        if self._prefill_done and self.policy.version >= 0:
            batch = {"image": np.stack([o["image"] for o in self.obs]),
                     "is_first": np.array([o["is_first"] for o in self.obs])}
            actions = self.policy(batch)
        else:
            actions = self.rng.uniform(-1, 1, (k, self.action_dim)).astype(np.float32)
        env_steps = episodes = 0
        stepped = []
        for j, env in enumerate(self.envs):
            before = env.episode_env_steps
            stepped.append(env.step(actions[j]))
            env_steps += env.episode_env_steps - before
        # The teacher's latents of every env's new frame in one call (K envs, one batch).
        z = (self.teacher(np.stack([o["image"] for o in stepped]))
             if self.teacher is not None else [None] * k)
        for j, (env, obs) in enumerate(zip(self.envs, stepped, strict=True)):
            self.returns[j] += float(obs["reward"])
            self._store(j, obs, actions[j], z[j])
            if obs["is_last"]:
                episodes += 1
                self._m["return"].observe(self.returns[j])
                self._m["last_return"].set(self.returns[j])
                self._record_episode(j, env_steps)
                self.returns[j] = 0.0
                obs = env.reset()
                self._store(j, obs, np.zeros(self.action_dim, np.float32))
            self.obs[j] = obs
        self.steps += 1
        self.env_steps += env_steps
        self.episodes += episodes
        self._unreported[0] += env_steps
        self._unreported[1] += k
        self._unreported[2] += episodes
        self._m["env_steps"].inc(env_steps)
        self._m["agent_steps"].inc(k)
        if episodes:
            self._m["episodes"].inc(episodes)
        self._m["step"].observe(time.perf_counter() - start)
        return env_steps

    def _record_episode(self, j: int, stepped: int) -> None:
        """The finished training episode of env `j`, at the run's env steps: the global count
        plus what this actor has not reported yet (other actors' unreported steps, at most
        `sync_every` agent steps each, are not in it)."""
        env_steps = self.control.counters()["env_steps"] + self._unreported[0] + stepped
        self.control.record_episode(
            env_steps=env_steps, actor=self.index, env=j,
            length=self.envs[j].episode_env_steps, policy_version=self.policy.version,
            scheme=self.scheme, **{"return": round(float(self.returns[j]), 4)})

    def _interrupted(self) -> bool:
        return self.stopping.is_set() or self.budget_spent()

    def budget_spent(self) -> bool:
        """True once the whole run has its `train.steps` env steps (or the learner said done)."""
        return (self.control.counters()["env_steps"] >= self.cfg.train.steps
                or self.control.get("done") == "1")

    def stats(self) -> dict[str, Any]:
        return {"actor": self.index, "incarnation": self.incarnation, "steps": self.steps,
                "env_steps": self.env_steps, "episodes": self.episodes,
                "policy_version": self.policy.version, "scheme": self.scheme,
                "envs": len(self.envs), "weights_rejected": self.weights_rejected,
                "insert_timeouts": self.insert_timeouts,
                "held_steps": self.writer.pending_steps()}

    def close(self) -> None:
        """Store partial episodes and release the envs."""
        try:
            self.writer.flush(force=True)
            self.report()
        finally:
            for env in self.envs:
                env.close()
