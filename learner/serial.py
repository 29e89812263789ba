"""The serial runner: env, in-process replay, learner, periodic evaluation, all in one process.

    diswm train --config debug --serial [--teacher CKPT] [--resume RUN_DIR]

It builds the same components as the distributed job (Policy, SequenceBuffer, Learner) and
drives them in one loop, so a CPU run, a test and a debugging session need no Ray or Redis.
Run folder::

    config.yaml          the resolved config (Config.load reads it back)
    checkpoints/latest.pt learner checkpoint (weights_only-loadable) + the loop's counters
    train.csv            one row per `log_every` updates (losses, eta, update time, fps)
    eval.csv             one row per evaluation (mean/min/max return, scheme, open-loop errors)
    episodes.csv         one row per training episode (the exploring policy's return, as
                         DreamerV2's published scores count them)
    openloop/            openloop_<env_steps>.png: the world model's open-loop prediction on the
                         first eval episode of each evaluation (diswm.diagnostics)
    metrics.json         summary: evaluations, counters, wall time
    curve.png            evaluation return vs env steps (scheme switch marked)

Each stored step follows DreamerV2: the env observation plus ``action`` = the action that led to
it (zeros on ``is_first``) plus ``policy_version``. Resume restores the learner exactly (weights,
optimizers, counters, eta position, scheme, RNG); the replay is not checkpointed, so a resumed
run refills it with `prefill` steps of the restored policy before training again.
"""

from __future__ import annotations

import csv
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
from diswm.diagnostics import open_loop_report
from diswm.envs import make_env
from diswm.runfolder import append_episode, private_dir
from learner.learner import Learner
from learner.schedule import RunSchedule, legacy_schedule
from replay_service.buffer import SequenceBuffer

CHECKPOINT = Path("checkpoints") / "latest.pt"


def append_csv(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def evaluate(cfg: Config, learner: Learner, episodes: int, scheme: str, seed: int) -> list[float]:
    """Returns of `episodes` episodes with the eval-mode policy (mode of the actor)."""
    return evaluate_recorded(cfg, learner, episodes, scheme, seed)[0]


def evaluate_recorded(cfg: Config, learner: Learner, episodes: int, scheme: str,
                      seed: int) -> tuple[list[float], dict[str, np.ndarray]]:
    """`evaluate`, plus the first episode recorded step by step in the replay's layout:
    ``image`` (N, H, W, 3) uint8, ``action`` (N, A) float32 (the action that led to each
    observation, zeros on the first), ``reward`` (N,) float32, ``is_first`` (N,) bool. Eval
    episodes never enter the replay: this is held-out data for `diswm.diagnostics`."""
    policy = Policy(cfg, learner.action_dim, 1, mode="eval")
    policy.load_weights(*learner.get_weights("policy"))
    returns: list[float] = []
    steps: list[tuple[np.ndarray, np.ndarray, float, bool]] = []
    zeros = np.zeros(learner.action_dim, np.float32)
    with make_env(cfg.env, cfg.distraction, seed=seed) as env:
        if cfg.distraction.enabled:
            env.set_scheme(scheme)
        for episode in range(episodes):
            obs, total = env.reset(), 0.0
            record = episode == 0
            if record:
                steps.append((obs["image"].copy(), zeros, float(obs["reward"]), True))
            while not obs["is_last"]:
                action = policy({"image": obs["image"][None], "is_first": [obs["is_first"]]})[0]
                obs = env.step(action)
                total += float(obs["reward"])
                if record:
                    steps.append((obs["image"].copy(), np.asarray(action, np.float32),
                                  float(obs["reward"]), bool(obs["is_first"])))
            returns.append(total)
    recording = {
        "image": np.stack([s[0] for s in steps]) if steps else np.zeros((0, 0, 0, 3), np.uint8),
        "action": np.stack([s[1] for s in steps]) if steps else np.zeros((0, learner.action_dim),
                                                                         np.float32),
        "reward": np.asarray([s[2] for s in steps], np.float32),
        "is_first": np.asarray([s[3] for s in steps], bool)}
    return returns, recording


RANDOM = "random.json"


def random_returns(cfg: Config, episodes: int, seed: int) -> list[float]:
    """Returns of a uniform-random policy on the run's task (the reference every learning
    curve is read against; the colour scheme does not change a random policy's returns)."""
    rng = np.random.default_rng(seed)
    out = []
    with make_env(cfg.env, cfg.distraction, seed=seed) as env:
        shape = env.act_space.shape  # actions in [-1, 1]
        for _ in range(episodes):
            obs, total = env.reset(), 0.0
            while not obs["is_last"]:
                obs = env.step(rng.uniform(-1.0, 1.0, shape).astype(np.float32))
                total += float(obs["reward"])
            out.append(total)
    return out


def ensure_random_reference(cfg: Config, run_dir: Path, episodes: int = 10,
                            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``random.json`` in the run folder: a uniform-random policy's returns on the task,
    measured once (a resumed run reuses them)."""
    path = Path(run_dir) / RANDOM
    if path.exists():
        return json.loads(path.read_text())
    returns = random_returns(cfg, episodes, seed=cfg.train.seed + 30_000)
    ref = {"task": cfg.env.task, "episodes": episodes, "returns": returns,
           "return_mean": float(np.mean(returns)), "return_std": float(np.std(returns))}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ref, indent=1) + "\n")
    if progress:
        progress(f"random policy on {cfg.env.task}: return {ref['return_mean']:.1f} "
                 f"+- {ref['return_std']:.1f} over {episodes} episodes")
    return ref


def read_random_reference(run_dir: Path) -> float | None:
    path = Path(run_dir) / RANDOM
    return json.loads(path.read_text())["return_mean"] if path.exists() else None


def open_loop_eval(learner: Learner, recording: dict[str, np.ndarray] | None, run_dir: Path,
                   env_steps: int, title: str) -> dict[str, float | None]:
    """Open-loop diagnostics of the learner's world model on an eval recording: writes
    ``openloop/openloop_<env_steps>.png`` in the run folder and returns the eval row's columns
    ``openl_image_mse`` and ``openl_reward_mae`` (None when the episode was too short)."""
    report = open_loop_report(learner.wm, recording,
                              run_dir / "openloop" / f"openloop_{env_steps}.png", title)
    if report is None:
        return {"openl_image_mse": None, "openl_reward_mae": None}
    return {"openl_image_mse": round(report["openl_image_mse"], 6),
            "openl_reward_mae": round(report["openl_reward_mae"], 6)}


def openl_note(row: dict[str, Any]) -> str:
    """", open-loop image MSE x, reward MAE y" for a progress line (empty without them)."""
    if row.get("openl_image_mse") is None:
        return ""
    return (f", open-loop image MSE {row['openl_image_mse']:.4f} reward MAE "
            f"{row['openl_reward_mae']:.3f}")


def plot_curve(evals: list[dict], path: Path, title: str, switch_at: float | None,
               random_return: float | None = None, task: str | None = None,
               published: str | None = "dreamerv2") -> None:
    """Eval return vs env steps; with `task`, the `published` method's seeds on it as a band
    over the same env steps (diswm/published.py), when there are any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = [e["env_steps"] for e in evals]
    ax.plot(xs, [e["return_mean"] for e in evals], marker="o", label="eval return")
    ax.fill_between(xs, [e["return_min"] for e in evals], [e["return_max"] for e in evals],
                    alpha=0.2)
    if switch_at is not None:
        ax.axvline(switch_at, color="grey", ls="--", label="scheme switch")
    if random_return is not None:
        ax.axhline(random_return, color="tab:red", ls=":", label="random policy")
    if task and published and xs:
        from diswm.published import draw

        draw(ax, published, task, max(xs))
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_summary(run_dir: Path, cfg: Config, evals: list[dict], **fields: Any) -> dict[str, Any]:
    """metrics.json (the evaluations and `fields`) and curve.png of a training run folder."""
    random_return = read_random_reference(run_dir)
    summary = {"task": cfg.env.task, **fields, "evaluations": evals,
               "final_return": evals[-1]["return_mean"] if evals else None,
               "random_return": random_return}
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    if evals:
        switch = (cfg.distraction.switch_at * cfg.train.steps
                  if cfg.distraction.enabled and cfg.distraction.switch_at < 1 else None)
        plot_curve(evals, run_dir / "curve.png", cfg.env.task, switch, random_return,
                   task=cfg.env.task)
    return summary


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
        from learner.evaluator import Evaluator, evaluation_snapshot

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
