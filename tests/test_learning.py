"""The learning criterion: DreamerV2 on Cartpole Swingup learns well above a random policy.

Slow (about 15 minutes on 2 CPU cores); run with `make test-all` or `pytest -m slow`. The full
proof (the distributed runtime, 2 seeds, 45 minutes each, with the transfer experiment) is in
docs/results/ and comes from `diswm experiment ... --budget cpu`.
"""

from __future__ import annotations

import json

import pytest

from diswm.presets import load_config
from learner.serial import SerialRunner


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="the learning criterion is not met yet: at the cpu size "
                   "the reward head stays uninformed for 1,000+ updates while the actor saturates "
                   "at one action bound (docs/results/cartpole_swingup-learning-proof, points "
                   "8-10); strict, so it fails loudly once it passes")
def test_dreamerv2_learns_cartpole_swingup_well_above_random(tmp_path):
    cfg = load_config(["cpu", "dreamerv2"], [
        "env.task=dmc:cartpole_swingup", "distraction.enabled=false", "train.steps=16000",
        "train.eval_every=4000", "train.eval_episodes=2", "train.compile=false"])
    summary = SerialRunner(cfg, tmp_path / "run", progress=print).run()
    random = json.loads((tmp_path / "run" / "random.json").read_text())["return_mean"]
    returns = [e["return_mean"] for e in summary["evaluations"]]
    print(f"random {random:.1f}; evaluations {[round(r, 1) for r in returns]}")
    assert 0 < random < 100  # the measured reference, in this test
    assert max(returns[-2:]) > 2.5 * random, (random, returns)
