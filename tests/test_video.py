"""Videos of the agent (diswm/video.py) with every evaluation, and `diswm eval` on any of a run's
checkpoints (learner/run_inspection.py): frames decoded back and compared with what was seen."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest

from diswm.presets import load_config
from diswm.video import SCALE, encode, side_by_side
from learner.serial import SerialRunner

ROOT = Path(__file__).resolve().parents[1]


def decode(path):
    with imageio.get_reader(path) as reader:  # its len() is inf: list(reader) would not end
        return np.stack([frame for frame in reader])


def test_frames_show_the_observation_beside_the_model(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    model = np.clip(truth / 255.0 + 0.1, 0, 1)
    frames = side_by_side(truth, model, np.ones(6))
    assert frames.shape == (6, 64 * SCALE + 16, 2 * 64 * SCALE, 3)
    np.testing.assert_array_equal(frames[:, :256:SCALE, :256:SCALE], truth)  # left: as seen
    right = frames[:, :256:SCALE, 256::SCALE].astype(float) / 255
    np.testing.assert_allclose(right, model, atol=1 / 255 + 1e-6)  # right: the model
    assert frames[:, 256:].max() > 200 and frames[:, 256:].mean() < 60  # a caption on black
    with pytest.raises(ValueError, match="do not match"):
        side_by_side(truth, model[:, :32], np.ones(6))
    data, suffix = encode(frames)
    assert suffix == ".mp4" and data[4:8] == b"ftyp"  # an MP4 container
    (tmp_path / "v.mp4").write_bytes(data)
    back = decode(tmp_path / "v.mp4")
    assert back.shape == frames.shape  # every frame, full size
    assert np.abs(back.astype(float) - frames).mean() < 12  # H.264 is lossy, not wrong


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = load_config(["tiny"], ["train.steps=200", "train.eval_every=100",
                                 "train.checkpoint_every=100"])
    run = tmp_path_factory.mktemp("video") / "run"
    SerialRunner(cfg, run, progress=lambda m: None).run()
    return run


def test_every_evaluation_writes_its_episode_video(run):
    evals = list(csv.DictReader((run / "eval.csv").open()))
    assert evals and "video" not in evals[0]  # bytes never reach the CSV
    for row in evals:
        frames = decode(run / "videos" / f"eval_{row['env_steps']}.mp4")
        # tiny: 100 env steps at action repeat 2 = 50 steps, plus the first observation
        assert frames.shape == (51, 64 * SCALE + 16, 2 * 64 * SCALE, 3)


def test_diswm_eval_evaluates_the_best_checkpoint_with_a_video(run, tmp_path):
    out = subprocess.run([sys.executable, "-m", "ops", "eval", str(run), "--checkpoint", "best",
                          "--episodes", "2", "--video", str(tmp_path / "best.mp4")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "best.pt" in out.stdout and "over 2 episode(s)" in out.stdout
    assert decode(tmp_path / "best.mp4").shape[0] == 51
    bad = subprocess.run([sys.executable, "-m", "ops", "eval", str(run), "--checkpoint",
                          str(tmp_path / "nope.pt")], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1] == (
        f"diswm: error: checkpoint {tmp_path / 'nope.pt'} does not exist")


def test_tensorboard_holds_every_scalar_image_video_and_the_config(run):
    """Read back by TensorBoard's own reader, at the runs' env steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "scalars": 0,
                                                           "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    train = list(csv.DictReader((run / "train.csv").open()))
    evals = list(csv.DictReader((run / "eval.csv").open()))
    for column in ("model_loss", "actor_entropy", "model/reward"):
        events = acc.Scalars(f"train/{column}")
        assert [e.step for e in events] == [int(r["env_steps"]) for r in train]
        assert [e.value for e in events] == pytest.approx([float(r[column]) for r in train],
                                                           rel=1e-5)
    returns = acc.Scalars("eval/return_mean")
    assert [(e.step, round(e.value, 4)) for e in returns] == [
        (int(r["env_steps"]), round(float(r["return_mean"]), 4)) for r in evals]
    images = acc.Images("eval/openloop")
    assert [i.step for i in images] == [int(r["env_steps"]) for r in evals]
    assert images[0].encoded_image_string[:4] == b"\x89PNG"
    videos = acc.Images("eval/episode")
    assert [v.step for v in videos] == [int(r["env_steps"]) for r in evals]
    assert videos[0].encoded_image_string[:6] == b"GIF89a" and videos[0].width == 128
    assert "config/text_summary" in tags["tensors"]


def test_weights_and_biases_offline_gets_the_same_numbers(tmp_path, monkeypatch):
    """logging.wandb in W&B's offline mode: nothing over the network, the run in <run>/wandb."""
    pytest.importorskip("wandb")
    import json

    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config(["tiny"], ["train.steps=200", "train.eval_every=100",
                                 "logging.wandb=true", "logging.wandb_mode=offline",
                                 "logging.wandb_project=diswm-test"])
    run = tmp_path / "run"
    SerialRunner(cfg, run, progress=lambda m: None).run()
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    assert (offline[0] / f"run-{(run / 'wandb.id').read_text().strip()}.wandb").stat().st_size
    history = [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                for i in r.history.item}
               for r in wandb_records(next(offline[0].glob("run-*.wandb")))
               if r.WhichOneof("record_type") == "history"]
    evals = list(csv.DictReader((run / "eval.csv").open()))
    train = list(csv.DictReader((run / "train.csv").open()))
    logged = [(h["env_steps"], h["eval/return_mean"]) for h in history if "eval/return_mean" in h]
    assert logged == [(int(r["env_steps"]), pytest.approx(float(r["return_mean"])))
                      for r in evals]
    losses = [(h["env_steps"], h["train/model_loss"]) for h in history if "train/model_loss" in h]
    assert losses == [(int(r["env_steps"]), pytest.approx(float(r["model_loss"]), rel=1e-5))
                      for r in train]
    videos = [h for h in history if h.get("eval/episode/_type") == "video-file"]  # media
    assert [h["env_steps"] for h in videos] == [int(r["env_steps"]) for r in evals]  # flattened
    assert len(list(offline[0].glob("files/media/videos/eval/episode_*.gif"))) == len(evals)


def wandb_records(path):
    """The records of a .wandb file: its 7-byte header, then LevelDB-log chunks (crc32c,
    length, type: 1 full, 2 first, 3 middle, 4 last) in 32 KiB blocks, each record a
    wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, parts, out = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header: padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            out.append(record)
            parts = b""
    return out
