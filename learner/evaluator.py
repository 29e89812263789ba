"""Evaluation off the learner: episodes on a snapshot of the weights, in a Ray actor of its own.

    snapshot = evaluation_snapshot(learner, point=5000, env_steps=5012, scheme="A", seed=...)
    row = Evaluator(cfg.to_dict(), action_dim, run_dir).evaluate(snapshot)   # the same code,
    ref = ray.remote(Evaluator).remote(...).evaluate.remote(snapshot)       # in or out of process

A snapshot holds the world model's and the actor-critic's weights at the scheduled env step
(learner/schedule.py) and the colour scheme in force then; the distributed learner hands it to
its `Evaluator` actor and keeps training, collecting the rows in order as they finish
(learner/service.py). An evaluation is a pure function of the snapshot: its episodes and the
policy's sampling are seeded from the snapshot's seed inside a forked RNG, so a remote evaluation
equals a local one, and evaluating inside a process never moves that process's random streams.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diswm.agent import Policy
from diswm.atomic import atomic_write
from diswm.config import Config, build_config, replace
from diswm.diagnostics import open_loop_report
from diswm.envs import make_env
from diswm.runfolder import RANDOM
from learner.learner import Learner


def evaluation_snapshot(learner: Learner, *, point: int, env_steps: int, scheme: str,
                        seed: int) -> dict[str, Any]:
    """What an evaluation needs, copied off the learner (CPU tensors: it may travel)."""
    def cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}

    return {"point": int(point), "env_steps": int(env_steps), "updates": learner.updates,
            "version": learner.version, "scheme": scheme, "seed": int(seed),
            "wm": cpu(learner.wm), "ac": cpu(learner.ac), "taken": time.time()}


class Evaluator:
    def __init__(self, cfg_dict: dict, action_dim: int, run_dir: str | Path,
                 threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        cfg = build_config(cfg_dict)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        # The world model and actor only: no teacher file, no optimizer steps, on the CPU.
        local = replace(cfg, distill={"teacher": "", "enabled": False, "finetune": False},
                        train={"device": "cpu", "compile": False})
        self.learner = Learner(local, action_dim, device="cpu")

    def evaluate(self, snapshot: dict[str, Any]) -> dict[str, Any]:
        cfg, learner = self.cfg, self.learner
        learner.wm.load_state_dict(snapshot["wm"])
        learner.ac.load_state_dict(snapshot["ac"])
        learner.updates, learner.version = snapshot["updates"], snapshot["version"]
        scheme, env_steps = snapshot["scheme"], snapshot["env_steps"]
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(snapshot["seed"])
            returns, recording = evaluate_recorded(cfg, learner, cfg.train.eval_episodes, scheme,
                                                   seed=snapshot["seed"])
            # The image travels back with the row (OPENLOOP_PNG) and the learner writes it into
            # the run folder: this actor may run on a node that does not see it.
            with tempfile.TemporaryDirectory(prefix="diswm-eval-") as tmp:
                openl = open_loop_eval(learner, recording, Path(tmp), env_steps,
                                       f"{cfg.env.task}, env step {env_steps}, scheme {scheme}, "
                                       f"{snapshot['updates']} updates")
                png = Path(tmp) / openloop_name(env_steps)
                if png.exists():
                    openl[OPENLOOP_PNG] = png.read_bytes()
            if cfg.train.eval_video and len(recording["image"]):
                openl[EVAL_VIDEO] = episode_video(learner, recording)
        return {"eval_step": snapshot["point"], "env_steps": env_steps,
                "updates": snapshot["updates"], "scheme": scheme,
                "return_mean": float(np.mean(returns)), "return_min": float(np.min(returns)),
                "return_max": float(np.max(returns)), "episodes": len(returns),
                "eval_seconds": round(time.perf_counter() - start, 3), **openl}

    def pid(self) -> int:
        import os

        return os.getpid()


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
    atomic_write(path, json.dumps(ref, indent=1) + "\n")
    if progress:
        progress(f"random policy on {cfg.env.task}: return {ref['return_mean']:.1f} "
                 f"+- {ref['return_std']:.1f} over {episodes} episodes")
    return ref


#: The key of an evaluation result that carries its open-loop image (PNG bytes); never a column.
OPENLOOP_PNG = "openloop_png"


#: The key of an evaluation result that carries its episode's video ({data, suffix, gif}).
EVAL_VIDEO = "video"
#: The key of a collected row that holds its media (written already; for the trackers).
MEDIA = "media"


def openloop_name(env_steps: int) -> str:
    """An open-loop image's path in the run folder."""
    return f"openloop/openloop_{env_steps}.png"


def video_stem(env_steps: int) -> str:
    """An evaluation video's path in the run folder, without its suffix (.mp4 or .gif)."""
    return f"videos/eval_{env_steps}"


def episode_video(learner: Learner, recording: dict[str, np.ndarray]) -> dict[str, Any]:
    """The recorded episode beside the world model's reconstruction (diswm/video.py): the
    video file's bytes and suffix, and a small GIF at the frames' own size for the trackers."""
    from diswm.models.openloop import reconstruct
    from diswm.video import encode, gif, side_by_side

    model = reconstruct(learner.wm, recording["image"], recording["action"],
                        recording["is_first"])
    data, suffix = encode(side_by_side(recording["image"], model, recording["reward"]))
    small = np.concatenate([recording["image"], (np.clip(model, 0, 1) * 255 + 0.5).astype(
        np.uint8)], axis=2)
    return {"data": data, "suffix": suffix, "gif": gif(small)}


def open_loop_eval(learner: Learner, recording: dict[str, np.ndarray] | None, run_dir: Path,
                   env_steps: int, title: str) -> dict[str, float | None]:
    """Open-loop diagnostics of the learner's world model on an eval recording: writes
    ``openloop/openloop_<env_steps>.png`` in the run folder and returns the eval row's columns
    ``openl_image_mse`` and ``openl_reward_mae`` (None when the episode was too short)."""
    report = open_loop_report(learner.wm, recording,
                              run_dir / openloop_name(env_steps), title)
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


class Evaluations:
    """A run's evaluations, in order: each on a snapshot of the weights when it is due, in an
    evaluation actor of its own when `remote` (a Ray actor on the learner's node; the learner
    keeps training meanwhile), else here when it is collected. An evaluation the actor fails
    twice is done here. The k-th evaluation's episodes are seeded ``train.seed + 10000 + k``."""

    def __init__(self, cfg: Config, action_dim: int, run_dir: Path, *, submitted: int = 0,
                 remote: bool = False):
        self.cfg, self.action_dim, self.run_dir = cfg, action_dim, Path(run_dir)
        self.submitted = submitted  # evaluations handed out so far (a resumed run's included)
        self.pending: list[tuple[dict, Any]] = []  # (snapshot, the actor's result or None)
        self.actor = self._start_actor() if remote and cfg.train.eval_episodes else None
        self._local: Evaluator | None = None

    def _start_actor(self):
        import ray
        from ray.util import get_current_placement_group
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # On the learner's node while it has a free CPU (the snapshots travel least; the CPUs
        # elsewhere may be the actors'), else wherever one is free: its images and video come
        # back with the rows. A plain soft affinity waits for a full node instead, and then no
        # evaluation runs (seen with the learner on a full second node); hence the spill.
        opts = {"num_cpus": 1, "max_restarts": 2, "max_task_retries": 1, "max_concurrency": 1}
        if get_current_placement_group() is None:  # in a run's placement group it joins that
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=True, _spill_on_unavailable=True)
        return ray.remote(Evaluator).options(**opts).remote(
            self.cfg.to_dict(), self.action_dim, str(self.run_dir), 1)

    def submit(self, learner: Learner, *, point: int, env_steps: int,
               wall_seconds: float) -> None:
        if not self.cfg.train.eval_episodes:
            return
        snapshot = evaluation_snapshot(learner, point=point, env_steps=env_steps,
                                       scheme=learner.scheme,
                                       seed=self.cfg.train.seed + 10_000 + self.submitted)
        snapshot["wall_seconds"] = wall_seconds
        self.submitted += 1
        ref = self.actor.evaluate.remote(snapshot) if self.actor is not None else None
        self.pending.append((snapshot, ref))

    def in_flight(self) -> list[int]:
        """The updates of the weights whose evaluations have not been collected yet."""
        return [int(snapshot["updates"]) for snapshot, _ in self.pending]

    def collect(self, block: bool = False, timeout: float = 1800.0,
                progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
        """The finished evaluations' rows, oldest first (`block`: wait for all of them); their
        open-loop image and video are written into the run folder, and each row keeps them
        under MEDIA for the trackers (not a column)."""
        rows = []
        while self.pending:
            snapshot, ref = self.pending[0]
            if ref is None:
                row = self._here(snapshot)
            else:
                import ray

                ready, _ = ray.wait([ref], timeout=timeout if block else 0)
                if not ready:
                    break
                try:
                    row = ray.get(ref)
                except Exception as err:  # noqa: BLE001 - the actor died twice: do it here
                    progress(f"learner: the evaluation actor failed ({type(err).__name__}); "
                             f"evaluating env step {snapshot['env_steps']} here")
                    row = self._here(snapshot)
            self.pending.pop(0)
            media = {k: row.pop(k) for k in (OPENLOOP_PNG, EVAL_VIDEO) if k in row}
            if OPENLOOP_PNG in media:
                atomic_write(self.run_dir / openloop_name(row["env_steps"]), media[OPENLOOP_PNG])
            if EVAL_VIDEO in media:
                video = media[EVAL_VIDEO]
                atomic_write(self.run_dir / f"{video_stem(row['env_steps'])}{video['suffix']}",
                             video["data"])
            rows.append({**row, "wall_seconds": round(snapshot["wall_seconds"], 3),
                         MEDIA: media})
        return rows

    def _here(self, snapshot: dict) -> dict:
        if self._local is None:
            self._local = Evaluator(self.cfg.to_dict(), self.action_dim, self.run_dir)
        return self._local.evaluate(snapshot)
