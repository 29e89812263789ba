"""The serial runner end to end on the tiny preset: run folder, checkpoints, resume."""

from __future__ import annotations

import csv
import json

import numpy as np
import torch

from diswm.config import Config
from diswm.models import VideoModel
from diswm.presets import load_config
from learner.serial import SerialRunner


def test_serial_runner_tiny_run_and_resume(tmp_path):
    teacher = tmp_path / "teacher.pt"
    cfg = load_config(["tiny"], [f"distill.teacher={teacher}", "train.steps=300",
                                 "train.eval_every=150", "distraction.switch_at=0.6"])
    torch.manual_seed(0)
    torch.save({"video_model": VideoModel(cfg.model).state_dict()}, teacher)
    run = tmp_path / "run"
    first = SerialRunner(cfg, run, progress=lambda m: None).run(stop_at=160)
    assert first["counters"]["env_steps"] >= 160 and first["updates"] > 0
    assert Config.load(run / "config.yaml") == cfg
    assert (run / "checkpoints" / "latest.pt").exists()
    updates_before = first["updates"]

    summary = SerialRunner(Config.load(run / "config.yaml"), run, resume=True,
                           progress=lambda m: None).run()
    assert summary["counters"]["env_steps"] >= 300 and summary["teacher"]
    assert summary["updates"] > updates_before
    assert summary["counters"]["switched"] == 1
    evals = list(csv.DictReader((run / "eval.csv").open()))
    # The fixed grid, across the resume: 150 (before the switch at 180) and the end, 300.
    assert [int(e["eval_step"]) for e in evals] == [150, 300]
    assert len(evals) == len(summary["evaluations"])
    assert [e["scheme"] for e in evals] == ["A", "B"]
    assert 150 <= int(evals[0]["env_steps"]) < 160
    rows = list(csv.DictReader((run / "train.csv").open()))
    assert rows and float(rows[-1]["eta"]) > 0 and "model/distill" in rows[-1]
    assert (run / "curve.png").stat().st_size > 1000
    assert json.loads((run / "metrics.json").read_text())["final_return"] is not None
    # Training episodes (tiny: 100 env steps each), across the resume: the first run's one
    # finished episode, then the resumed run's (it starts a new episode at env step 160).
    episodes = list(csv.DictReader((run / "episodes.csv").open()))
    assert [int(e["env_steps"]) for e in episodes] == [100, 260]
    assert all(int(e["length"]) == 100 and np.isfinite(float(e["return"])) for e in episodes)
    assert [e["scheme"] for e in episodes] == ["A", "B"]


def test_serial_runner_stores_the_teachers_latents(tmp_path):
    """The serial runner computes the teacher's latent once per frame as it stores the step
    (as actors do); every stored latent is the teacher's for its frame."""
    teacher = tmp_path / "teacher.pt"
    cfg = load_config(["tiny"], [f"distill.teacher={teacher}", "train.steps=120",
                                 "train.eval_every=1000"])
    torch.manual_seed(0)
    torch.save({"video_model": VideoModel(cfg.model).state_dict()}, teacher)
    runner = SerialRunner(cfg, tmp_path / "run", progress=lambda m: None)
    runner.run()
    batch = runner.replay.sample(4, 8)
    with torch.no_grad():
        want = runner.learner.teacher(torch.as_tensor(batch["image"]), sample=False)[0]
    torch.testing.assert_close(torch.as_tensor(batch["z_teacher"]), want.float(),
                               rtol=1e-4, atol=1e-4)
