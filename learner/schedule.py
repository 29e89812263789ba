"""The run's schedule, shared by the serial runner and the distributed learner: evaluations and
checkpoints on a fixed grid of env steps, and the colour-scheme switch.

    schedule = RunSchedule.from_config(cfg)
    if schedule.switch_due(env_steps, scheme): ...switch every env...
    point = schedule.eval_due(env_steps)        # a grid point (k * eval_every) or None
    if point is not None: ...evaluate, recorded at `point`...
    if schedule.checkpoint_due(env_steps): ...save, with schedule.state()...
    point = schedule.final_eval()               # train.steps, unless already evaluated there

Evaluations are labelled with their grid point (``eval_step`` in eval.csv), so runs and seeds
line up exactly in `diswm report` and no two evaluations can share a point: the k-th grid point
is evaluated once, when the run's env steps first reach it (the actual count is kept beside it).
When the env steps jump past several points at once, the latest is evaluated and the skipped ones
are counted (`skipped_evals`), never silently relabelled. The switch happens before an evaluation
at the same step, so an evaluation runs in the scheme in force at its point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class RunSchedule:
    steps: int
    eval_every: int
    checkpoint_every: int
    switch_step: float | None  # env step of the scheme switch, None without one
    switch_to: str = "B"
    evaluated: int = 0  # the latest grid point evaluated (0: none yet)
    checkpointed: int = 0  # the latest checkpoint grid point passed
    skipped_evals: int = 0

    @classmethod
    def from_config(cls, cfg, state: dict[str, Any] | None = None) -> RunSchedule:
        d = cfg.distraction
        switch = d.switch_at * cfg.train.steps if d.enabled and d.switch_at < 1.0 else None
        schedule = cls(cfg.train.steps, cfg.train.eval_every, cfg.train.checkpoint_every, switch,
                       d.switch_to)
        if state:
            schedule.load(state)
        return schedule

    # -- what is due -------------------------------------------------------------------------
    def switch_due(self, env_steps: int, scheme: str) -> bool:
        return (self.switch_step is not None and scheme != self.switch_to
                and env_steps >= self.switch_step)

    def eval_due(self, env_steps: int) -> int | None:
        """The grid point to evaluate at now, if the run reached one not yet evaluated. The run's
        last step is not one of them: `final_eval` takes it, on the final weights (the learner
        still trains the updates it is owed after the actors stop)."""
        reached = min(env_steps, self.steps - 1) // self.eval_every * self.eval_every
        if reached <= self.evaluated or reached == 0:
            return None
        self.skipped_evals += (reached - self.evaluated) // self.eval_every - 1
        self.evaluated = reached
        return reached

    def final_eval(self) -> int | None:
        """`steps` at the end of the run, unless its last grid point was exactly that."""
        if self.evaluated >= self.steps:
            return None
        self.evaluated = self.steps
        return self.steps

    def checkpoint_due(self, env_steps: int) -> bool:
        reached = env_steps // self.checkpoint_every * self.checkpoint_every
        if reached <= self.checkpointed or reached == 0:
            return False
        self.checkpointed = reached
        return True

    # -- resuming ------------------------------------------------------------------------------
    def state(self) -> dict[str, int]:
        return {"evaluated": self.evaluated, "checkpointed": self.checkpointed,
                "skipped_evals": self.skipped_evals}

    def load(self, state: dict[str, Any]) -> None:
        for key in ("evaluated", "checkpointed", "skipped_evals"):
            if key in state:
                setattr(self, key, int(state[key]))


def legacy_schedule(cfg, saved: dict[str, Any]) -> dict[str, int]:
    """The schedule state of a checkpoint written before the fixed grid (it stored the next
    eval and checkpoint env steps, `next_eval`/`eval` and `next_ckpt`/`ckpt`)."""
    t = cfg.train
    next_eval = int(saved.get("next_eval", saved.get("eval", 0)))
    next_ckpt = int(saved.get("next_ckpt", saved.get("ckpt", t.checkpoint_every)))
    return {"evaluated": max(next_eval - t.eval_every, 0) // t.eval_every * t.eval_every,
            "checkpointed": max(next_ckpt - t.checkpoint_every, 0) // t.checkpoint_every
            * t.checkpoint_every}
