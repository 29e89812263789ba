"""Env stepping shared by every role that collects data: env + policy -> episode arrays.

    env = make_env(cfg.env, cfg.distraction, seed=seed, task=task)
    act = RandomPolicy(env.act_space.shape, seed=seed)        # or CheckpointPolicy(path, size)
    episode = run_episode(env, act)                             # dict of (T, ...) arrays

An episode holds one row per observation (the reset observation included, as DreamerV2 stores
it): ``image`` (T, H, W, 3) uint8, ``action`` (T, A) float32 (the action that led to the row;
zeros on the first row), ``reward`` float32, ``is_first``/``is_last``/``is_terminal`` bool, and
the ground-truth factors ``colours`` (T, C) and ``state`` (T, S) float32.

No Ray, Redis or process code here: the pretraining collectors and the runtime's actors both wrap
these functions in their own process shells.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from diswm.checkpoints import load_checkpoint
from diswm.envs import DistractedEnv

ActFn = Callable[[Mapping[str, np.ndarray]], np.ndarray]
STEP_KEYS = ("image", "action", "reward", "is_first", "is_last", "is_terminal", "colours",
             "state")


class RandomPolicy:
    """Uniform actions in [-1, 1]^A from a seeded generator (reproducible per seed)."""

    def __init__(self, action_shape: tuple[int, ...], seed: int):
        self.action_shape = tuple(action_shape)
        self._rng = np.random.default_rng([int(seed), 0xAC7])

    def __call__(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        return self._rng.uniform(-1.0, 1.0, self.action_shape).astype(np.float32)


class CheckpointPolicy:
    """The actor `Policy` of a learner checkpoint, driving one env (explore mode by default).

    The checkpoint is a learner checkpoint (``{"config", "action_dim", "wm", "ac", ...}``) loaded
    with ``weights_only=True``; its own config gives the network sizes."""

    def __init__(self, path: str | Path, *, mode: str = "explore", seed: int = 0):
        import torch

        from diswm.agent import Policy
        from diswm.config import build_config

        path = Path(path)
        payload = load_checkpoint(path, "policy checkpoint")
        if not isinstance(payload, Mapping) or not {"config", "action_dim", "wm", "ac"} <= set(
                payload):
            raise ValueError(f"{path}: not a learner checkpoint (needs config, action_dim, wm, ac)")
        cfg = build_config(payload["config"])
        self.action_dim = int(payload["action_dim"])
        self.size = cfg.env.size
        state = {f"wm.{k}": v for k, v in payload["wm"].items()}
        state.update({f"ac.{k}": v for k, v in payload["ac"].items()})
        self._policy = Policy(cfg, self.action_dim, 1, mode=mode)
        self._policy.load_weights(int(payload.get("counters", {}).get("version", 0)), state)
        self._generator_seed = int(seed)
        torch.manual_seed(self._generator_seed)

    def __call__(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        return self._policy({"image": np.asarray(obs["image"])[None],
                             "is_first": np.asarray([obs["is_first"]])})[0]


def file_digest(path: str | Path) -> str:
    """``sha256:<hex>`` of a file's bytes (identifies a policy checkpoint or a shard)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def step_row(obs: Mapping[str, np.ndarray], action: np.ndarray) -> dict[str, np.ndarray]:
    """One stored row: the observation's fields plus the action that led to it."""
    row = {k: np.asarray(obs[k]) for k in STEP_KEYS if k != "action"}
    row["action"] = np.asarray(action, np.float32)
    return row


def stack_rows(rows: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Rows -> (T, ...) arrays with the dtypes of `STEP_KEYS`."""
    if not rows:
        raise ValueError("cannot stack an empty episode")
    return {k: np.stack([r[k] for r in rows]) for k in STEP_KEYS}


def run_episode(env: DistractedEnv, act: ActFn, max_steps: int | None = None) -> dict[str, np.ndarray]:
    """Reset `env` and step it with `act` until the episode ends (or `max_steps` agent steps)."""
    obs = env.reset()
    rows = [step_row(obs, np.zeros(env.act_space.shape, np.float32))]
    steps = 0
    while not obs["is_last"] and (max_steps is None or steps < max_steps):
        action = np.asarray(act(obs), np.float32)
        obs = env.step(action)
        rows.append(step_row(obs, action))
        steps += 1
    return stack_rows(rows)


def concat_episodes(episodes: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Episodes -> one set of (sum T, ...) arrays; episode starts stay marked by ``is_first``."""
    if not episodes:
        raise ValueError("no episodes to concatenate")
    return {k: np.concatenate([ep[k] for ep in episodes]) for k in episodes[0]}


def split_episodes(arrays: Mapping[str, np.ndarray]) -> list[tuple[int, int]]:
    """(start, length) of each episode in concatenated arrays, from ``is_first``."""
    is_first = np.asarray(arrays["is_first"], bool)
    if len(is_first) == 0:
        return []
    if not is_first[0]:
        raise ValueError("concatenated episodes must start with is_first")
    starts = np.flatnonzero(is_first)
    ends = np.append(starts[1:], len(is_first))
    return [(int(s), int(e - s)) for s, e in zip(starts, ends, strict=True)]


__all__ = ["STEP_KEYS", "CheckpointPolicy", "RandomPolicy", "concat_episodes", "file_digest",
           "run_episode", "split_episodes", "stack_rows", "step_row"]
