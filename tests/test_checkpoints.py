"""Checkpoints to choose from (diswm/checkpoints.py `CheckpointSet`) and files that never tear
(diswm/atomic.py): the last N, latest.pt, best.pt by evaluation return, and a resume that skips a
damaged newest checkpoint."""

from __future__ import annotations

import csv
import json
import os
import stat

import pytest
import torch

from diswm.atomic import atomic_file, atomic_write
from diswm.checkpoints import CheckpointSet, numbered
from diswm.presets import load_config
from learner.serial import SerialRunner


def write(value):
    def out(path):
        with atomic_file(path) as f:
            torch.save({"value": torch.tensor(value)}, f)
    return out


def test_the_last_n_stay_with_latest_and_best(tmp_path):
    ckpts = CheckpointSet(tmp_path, keep=2)
    for updates in (10, 20, 30):
        ckpts.save(write(updates), updates)
    assert [u for u, _ in ckpts.numbered()] == [30, 20]
    assert os.path.samefile(tmp_path / "latest.pt", tmp_path / numbered(30))  # a link, no copy
    assert ckpts.offer(20, 2000, 5.0) and not ckpts.offer(30, 3000, 4.0)  # 4 < 5: stays
    assert not ckpts.offer(10, 1000, 99.0)  # pruned already: nothing to link
    for updates in (40, 50):
        ckpts.save(write(updates), updates, protect=[40])  # an evaluation in flight at 40
    assert [u for u, _ in ckpts.numbered()] == [50, 40, 20]  # newest 2, the best, none else
    assert json.loads((tmp_path / "best.json").read_text()) == {
        "file": numbered(20), "updates": 20, "env_steps": 2000, "return": 5.0}
    assert torch.load(tmp_path / "best.pt", weights_only=True)["value"] == 20
    ckpts.save(write(60), 60)
    assert [u for u, _ in ckpts.numbered()] == [60, 50, 20]  # 40 no longer protected
    assert ckpts.resolve("best") == tmp_path / "best.pt"
    with pytest.raises(ValueError, match="no best checkpoint"):
        CheckpointSet(tmp_path / "none").resolve("best")
    with pytest.raises(ValueError, match="must be at least 1"):
        CheckpointSet(tmp_path, keep=0)


def test_an_interrupted_write_leaves_the_old_file_whole(tmp_path):
    path = atomic_write(tmp_path / "state.json", '{"old": 1}\n')
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # run files stay private
    with pytest.raises(RuntimeError), atomic_file(path, "w") as f:
        f.write('{"new": ')
        raise RuntimeError("the process dies mid-write")
    assert path.read_text() == '{"old": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temporary left


def test_a_run_keeps_its_best_evaluation_and_resumes_past_a_damaged_checkpoint(tmp_path):
    cfg = load_config(["tiny"], ["train.steps=300", "train.eval_every=100",
                                 "train.checkpoint_every=100", "train.keep_checkpoints=2"])
    run = tmp_path / "run"
    lines: list[str] = []
    first = SerialRunner(cfg, run, progress=lines.append).run(stop_at=210)
    evals = list(csv.DictReader((run / "eval.csv").open()))
    assert len(evals) == 2
    best = max(evals, key=lambda e: float(e["return_mean"]))
    record = json.loads((run / "checkpoints" / "best.json").read_text())
    assert record["updates"] == int(best["updates"])
    assert record["return"] == pytest.approx(float(best["return_mean"]))
    saved = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert saved["counters"]["updates"] == int(best["updates"])  # the weights it evaluated
    kept = [u for u, _ in CheckpointSet(run / "checkpoints").numbered()]
    assert kept[0] == first["updates"] and len(kept) <= 3  # the newest 2, and the best
    assert record["updates"] in kept
    # The newest checkpoint is damaged (latest.pt and its numbered file are one file): the
    # resume takes the one before it, and says so.
    with (run / "checkpoints" / "latest.pt").open("r+b") as f:
        f.truncate(100)
    lines.clear()
    resumed = SerialRunner(cfg, run, resume=True, progress=lines.append)
    assert resumed.loop.learner.updates == kept[1]
    text = "\n".join(lines)
    assert "cannot resume from" in text and "latest.pt" in text
    assert f"resuming from {run / 'checkpoints' / numbered(kept[1])}" in text
