"""World-model diagnostics: open-loop prediction against a plain loop, known-answer errors, the
serial runner's openloop PNGs and eval.csv columns, and `diswm inspect`."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from diswm.diagnostics import cut_windows
from diswm.models import RSSM, WorldModel
from diswm.models.nets import preprocess_image
from diswm.models.openloop import open_loop
from diswm.presets import load_config
from learner.serial import SerialRunner
from ops.cli import main

A, B, T, C = 3, 2, 9, 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these tiny models gain nothing from two, and on a busy 2-core
    machine two threads contend (a 4x slower serial run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def wm():
    torch.manual_seed(7)
    return WorldModel(load_config(["tiny"]).model, A, 64)


def inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (B, T, 64, 64, 3), dtype=np.uint8)
    action = rng.uniform(-1, 1, (B, T, A)).astype(np.float32)
    is_first = np.zeros((B, T), bool)
    is_first[:, 0] = True
    action[is_first] = 0
    reward = rng.normal(size=(B, T)).astype(np.float32)
    return image, action, reward, is_first


def plain_loop(wm, image, action, is_first, sample: bool, seed: int):
    """Context decoded from `rssm.observe`'s posterior, then a hand-written img_step loop."""
    torch.manual_seed(seed)
    x = preprocess_image(torch.as_tensor(image))
    a, first = torch.as_tensor(action), torch.as_tensor(is_first)
    with torch.no_grad():
        post, _ = wm.rssm.observe(wm.embed(x[:, :C], sample=sample), a[:, :C], first[:, :C],
                                  sample=sample)
        feats = [RSSM.feat(post)]
        state = {k: v[:, C - 1] for k, v in post.items()}
        for t in range(C, T):
            state = wm.rssm.img_step(state, a[:, t], sample=sample)
            feats.append(RSSM.feat(state)[:, None])
        feat = torch.cat(feats, 1)
        return feat, wm.decoder(feat) + 0.5, wm.reward(feat)[..., 0]


@pytest.mark.parametrize("sample", [False, True])
def test_open_loop_matches_a_plain_observe_then_imagine_loop(wm, sample):
    image, action, reward, is_first = inputs()
    rng_before = torch.get_rng_state()
    out = open_loop(wm, image, action, reward, is_first, C, seed=3, sample=sample)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
    feat, model, reward_pred = plain_loop(wm, image, action, is_first, sample, seed=3)
    torch.testing.assert_close(out["feat"], feat, rtol=0, atol=0)
    torch.testing.assert_close(out["model_image"], model, rtol=0, atol=0)
    torch.testing.assert_close(out["reward_pred"], reward_pred, rtol=0, atol=0)
    assert out["model_image"].shape == (B, T, 64, 64, 3) and out["reward_pred"].shape == (B, T)
    # The errors are over the parts they name.
    truth = image.astype(np.float64) / 255
    se = (model.double().numpy() - truth) ** 2
    assert out["openl_image_mse"] == pytest.approx(se[:, C:].mean(), rel=1e-5)
    assert out["recon_image_mse"] == pytest.approx(se[:, :C].mean(), rel=1e-5)
    assert out["openl_reward_mae"] == pytest.approx(
        np.abs(reward_pred.numpy() - reward)[:, C:].mean(), rel=1e-5)
    again = open_loop(wm, image, action, reward, is_first, C, seed=3, sample=sample)
    assert torch.equal(again["model_image"], out["model_image"])  # reproducible
    if sample:
        other = open_loop(wm, image, action, reward, is_first, C, seed=4, sample=sample)
        assert not torch.equal(other["feat"], out["feat"])


def test_open_loop_errors_count_only_the_open_loop_part():
    """A model whose frames and rewards are constants: truth equal to them after the context
    gives zero open-loop error whatever the context frames are."""
    torch.manual_seed(0)
    wm = WorldModel(load_config(["tiny"]).model, A, 64)
    with torch.no_grad():
        wm.decoder.deconvs[-1].weight.zero_()
        wm.decoder.deconvs[-1].bias.fill_(200 / 255 - 0.5)  # every pixel predicts 200
        wm.reward.net[-1].weight.zero_()
        wm.reward.net[-1].bias.fill_(1.5)
    image, action, reward, is_first = inputs(1)
    image[:, :C] = 50
    image[:, C:] = 200
    reward[:, :C] = -2.5
    reward[:, C:] = 1.5
    out = open_loop(wm, image, action, reward, is_first, C)
    assert out["openl_image_mse"] == 0.0 and out["openl_reward_mae"] == 0.0
    assert out["recon_image_mse"] == pytest.approx((150 / 255) ** 2, rel=1e-5)
    with pytest.raises(ValueError, match="context"):
        open_loop(wm, image[:, :C], action[:, :C], reward[:, :C], is_first[:, :C], C)


def test_cut_windows_spreads_up_to_three_windows_over_an_episode():
    def rec(n):
        return {"image": np.zeros((n, 4, 4, 3), np.uint8) + np.arange(n)[:, None, None, None]
                .astype(np.uint8), "action": np.zeros((n, A), np.float32),
                "reward": np.arange(n, dtype=np.float32), "is_first": np.arange(n) == 0}

    w = cut_windows(rec(501))
    assert w["image"].shape == (3, 50, 4, 4, 3)
    assert list(w["reward"][:, 0]) == [0, 226, 451] == list(w["start"]) and w["is_first"][0, 0]
    assert cut_windows(rec(51))["reward"].shape == (1, 50)
    assert cut_windows(rec(20))["reward"].shape == (1, 20)
    assert cut_windows(rec(5)) is None


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A short serial run on the tiny preset (episodes of 50 agent steps)."""
    cfg = load_config(["tiny"], ["train.steps=200", "train.eval_every=100",
                                 "train.checkpoint_every=1000"])  # evals at 100 and 200 (end)
    run_dir = tmp_path_factory.mktemp("diag") / "run"
    summary = SerialRunner(cfg, run_dir, progress=lambda m: None).run()
    return run_dir, summary


def test_serial_run_writes_openloop_images_and_errors(run):
    run_dir, summary = run
    rows = list(csv.DictReader((run_dir / "eval.csv").open()))
    assert len(rows) >= 2
    for row in rows:
        for key in ("openl_image_mse", "openl_reward_mae"):
            assert math.isfinite(float(row[key])) and float(row[key]) >= 0, (key, row)
        png = run_dir / "openloop" / f"openloop_{row['env_steps']}.png"
        assert png.stat().st_size > 5000, png
    evals = json.loads((run_dir / "metrics.json").read_text())["evaluations"]
    assert all(math.isfinite(e["openl_image_mse"]) for e in evals)


def test_inspect_prints_history_and_open_loop_numbers(run, capsys, tmp_path):
    run_dir, _ = run
    assert main(["inspect", str(run_dir), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "openl_image_mse" in out and "this inspection" in out and "image MSE" in out
    rows = list(csv.DictReader((run_dir / "eval.csv").open()))
    assert f"{float(rows[-1]['openl_image_mse']):.5f}" in out  # the history is in the table
    assert len(list((tmp_path / "out").glob("openloop_*.png"))) == 1


def test_inspect_missing_run_or_checkpoint_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    assert main(["inspect", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diswm: error:") and str(missing) in err[0]
    empty = tmp_path / "empty-run"
    empty.mkdir()
    assert main(["inspect", str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diswm: error:") and "latest.pt" in err[0]


def test_distributed_learner_evaluation_adds_open_loop_row_png_and_gauges(tmp_path):
    from diswm import metrics
    from learner.service import LearnerService
    from replay_service.client import ReplaySpec
    from replay_service.server import RedisServer

    cfg = load_config(["tiny"], ["replay.namespace=diag-test"])
    server = RedisServer(tmp_path / "redis", persistence="none").start()
    try:
        spec = ReplaySpec.from_config(cfg, port=server.port, password=server.password)
        service = LearnerService(cfg, spec, tmp_path / "run", 6,  # cheetah run
                                 progress=lambda m: None)
        service.evaluate(123, 100)
    finally:
        server.stop()
    row = next(csv.DictReader((tmp_path / "run" / "eval.csv").open()))
    assert (tmp_path / "run" / "openloop" / "openloop_123.png").stat().st_size > 5000
    for key, gauge in (("openl_image_mse", metrics.LEARNER_OPENLOOP_IMAGE_MSE),
                       ("openl_reward_mae", metrics.LEARNER_OPENLOOP_REWARD_ERROR)):
        value = gauge.labels("diag-test")._value.get()  # noqa: SLF001
        assert math.isfinite(float(row[key])) and value == pytest.approx(float(row[key]))
