"""Pretraining the video model: the loss falls, resume is exact, the teacher checkpoint loads into
the learner as a frozen teacher, and inspect writes its PNGs and metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diswm.config import replace
from diswm.models.video import load_pretrained, make_teacher
from learner.learner import Learner
from ops.cli import main
from pretrain.collect import collect
from pretrain.teacher_inspection import inspect_checkpoint
from pretrain.trainer import CHECKPOINT, PretrainRunner


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model is too small to gain from threads, and on a busy 2-core machine two
    threads per process make each update ~50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, tiny_cfg):
    out = tmp_path_factory.mktemp("pretrain_data")
    collect(tiny_cfg, out, frames=4 * 51, workers=0)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_cfg, data_dir):
    cfg = replace(tiny_cfg, pretrain={"updates": 40, "lr": 2e-3, "checkpoint_every": 20,
                                      "log_every": 20})
    run_dir = tmp_path_factory.mktemp("pretrain_run")
    lines = []
    summary = PretrainRunner(cfg, run_dir, data=data_dir, progress=lines.append).run()
    return cfg, run_dir, summary, lines


def test_short_training_lowers_the_loss_and_writes_the_run_folder(trained):
    cfg, run_dir, summary, lines = trained
    assert summary["finished"] and summary["updates"] == 40
    assert summary["final_loss"] < summary["first_loss"] - 10.0, summary
    assert any("update 40/40" in line for line in lines)
    for name in ("config.yaml", "data.json", "train.csv", "loss.png", "teacher.pt",
                 "summary.json", str(CHECKPOINT)):
        assert (run_dir / name).is_file(), name
    rows = (run_dir / "train.csv").read_text().splitlines()
    assert len(rows) == 41 and rows[0].startswith("update,loss,image,kl,beta")
    assert json.loads((run_dir / "summary.json").read_text())["updates"] == 40


def test_teacher_checkpoint_loads_into_the_learner_frozen(trained):
    cfg, run_dir, _, _ = trained
    state = load_pretrained(run_dir / "teacher.pt")
    teacher = make_teacher(cfg.model, state, cfg.env.size)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    meta = torch.load(run_dir / "teacher.pt", weights_only=True)
    assert meta["format"] == "diswm-teacher-v1" and meta["updates"] == 40
    assert meta["data"]["task"] == "dmc:cheetah_run"

    learner = Learner(replace(cfg, distill={"teacher": str(run_dir / "teacher.pt")}),
                      action_dim=6)
    assert learner.teacher is not None
    for name, value in learner.teacher.state_dict().items():
        assert torch.equal(value, state[f"encoder.{name}"]), name
    in_optimizers = {id(p) for opt in learner.opts.values() for g in opt.param_groups
                     for p in g["params"]}
    assert not in_optimizers & {id(p) for p in learner.teacher.parameters()}


def test_resume_continues_exactly(tmp_path, tiny_cfg, data_dir):
    cfg = replace(tiny_cfg, pretrain={"updates": 6, "checkpoint_every": 3})
    straight = PretrainRunner(cfg, tmp_path / "straight", data=data_dir)
    straight.run()
    first = PretrainRunner(cfg, tmp_path / "split", data=data_dir)
    assert first.run(stop_at=3) == {"updates": 3, "finished": False}
    with pytest.raises(ValueError, match="--resume"):
        PretrainRunner(cfg, tmp_path / "split", data=data_dir)
    assert main(["pretrain", "train", "--resume", str(tmp_path / "split")]) == 0
    a = torch.load(tmp_path / "straight" / "teacher.pt", weights_only=True)["video_model"]
    b = torch.load(tmp_path / "split" / "teacher.pt", weights_only=True)["video_model"]
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (tmp_path / "split" / "train.csv").read_text().count("\n") == 7


def test_inspect_writes_traversal_reconstructions_and_metrics(trained, data_dir, tmp_path):
    _, run_dir, _, _ = trained
    report = inspect_checkpoint(run_dir / "teacher.pt", data_dir, tmp_path, samples=204)
    for key in ("reconstructions", "traversal", "metrics"):
        assert (tmp_path / report["files"][key].split("/")[-1]).stat().st_size > 1000
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("mig", "sap", "mig_colours", "mig_state", "sap_colours", "sap_state"):
        assert 0.0 <= saved[key] <= 1.0, key
    assert len(saved["kl_per_dim"]) == 20 and saved["num_samples"] == 204
    assert np.isfinite(saved["recon_mse"])


def test_train_errors_name_the_problem(tmp_path, tiny_cfg, data_dir):
    assert main(["pretrain", "train", "--config", "tiny", "--out", str(tmp_path / "r")]) == 2
    assert main(["pretrain", "train", "--data", str(tmp_path / "missing"), "--config", "tiny",
                 "--out", str(tmp_path / "r")]) == 2
    cfg = replace(tiny_cfg, pretrain={"batch_length": 200})
    with pytest.raises(ValueError, match="batch_length=200"):
        PretrainRunner(cfg, tmp_path / "r2", data=data_dir)
