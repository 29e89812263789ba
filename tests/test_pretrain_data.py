"""Pretraining data: shard round trip, manifest integrity, corrupted shards reported by name, and
a collection killed mid-way and resumed (on local Ray) equal to an uninterrupted one."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from diswm.config import replace
from diswm.envs import make_env
from diswm.rollout import RandomPolicy, concat_episodes, run_episode, split_episodes
from ops.cli import main
from pretrain.collect import collect
from pretrain.dataset import VideoDataset
from pretrain.video_shards import (
    MANIFEST,
    CorruptShard,
    ManifestError,
    read_manifest,
    read_shard,
    verify,
    write_manifest,
    write_shard,
)

FRAMES_PER_EPISODE = 51  # tiny: time_limit 100 env steps, action repeat 2, plus the reset frame


def _shard_table(folder: Path) -> list[tuple]:
    return [(e["index"], e["file"], e["frames"], e["episodes"], e["seed"], e["checksum"])
            for e in read_manifest(folder)["shards"]]


@pytest.fixture(scope="module")
def episodes(tiny_cfg):
    with make_env(tiny_cfg.env, tiny_cfg.distraction, seed=3) as env:
        act = RandomPolicy(env.act_space.shape, seed=3)
        return [run_episode(env, act) for _ in range(2)]


def test_episode_arrays_hold_images_actions_and_factors(episodes):
    ep = episodes[0]
    T = FRAMES_PER_EPISODE
    assert ep["image"].shape == (T, 64, 64, 3) and ep["image"].dtype == np.uint8
    assert ep["action"].shape == (T, 6) and not ep["action"][0].any()
    assert np.abs(ep["action"]).max() <= 1.0
    assert ep["is_first"][0] and not ep["is_first"][1:].any() and ep["is_last"][-1]
    assert ep["colours"].shape[0] == T and ep["colours"].shape[1] % 3 == 0
    assert ep["colours"].std(0).max() > 0  # the distraction drifts every step
    assert ep["state"].shape[0] == T and ep["state"].dtype == np.float32


def test_shard_round_trip_and_manifest_integrity(tmp_path, episodes):
    arrays = concat_episodes(episodes)
    entry = write_shard(tmp_path, 0, 1234, arrays, codec="zstd")
    assert entry["file"] == "shard-000000.dwmc" and entry["episodes"] == 2
    assert entry["frames"] == 2 * FRAMES_PER_EPISODE and entry["checksum"].startswith("sha256:")
    assert not list(tmp_path.glob("*.tmp"))
    write_manifest(tmp_path, {"format": "diswm-pretrain-shards-v1", "task": "dmc:cheetah_run",
                              "shards": [entry]})
    manifest = read_manifest(tmp_path)
    assert manifest["frames"] == entry["frames"] and manifest["episodes"] == 2
    back = read_shard(tmp_path, manifest["shards"][0])
    assert set(back) == set(arrays)
    for key, value in arrays.items():
        assert back[key].dtype == value.dtype and np.array_equal(back[key], value), key
    assert split_episodes(back) == [(0, FRAMES_PER_EPISODE),
                                    (FRAMES_PER_EPISODE, FRAMES_PER_EPISODE)]

    # The manifest's own checks: totals and duplicates.
    bad = json.loads((tmp_path / MANIFEST).read_text())
    bad["frames"] += 1
    (tmp_path / MANIFEST).write_text(json.dumps(bad))
    with pytest.raises(ManifestError, match="frames"):
        read_manifest(tmp_path)
    bad["shards"] = [entry, entry]
    bad["frames"] = 2 * entry["frames"]
    (tmp_path / MANIFEST).write_text(json.dumps(bad))
    with pytest.raises(ManifestError, match="duplicate"):
        read_manifest(tmp_path)


def test_corrupted_shard_is_reported_by_name(tmp_path, tiny_cfg, capsys):
    collect(tiny_cfg, tmp_path, frames=3 * FRAMES_PER_EPISODE, workers=0)
    assert verify(tmp_path) == []
    assert main(["pretrain", "verify", str(tmp_path)]) == 0
    path = tmp_path / "shard-000001.dwmc"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    problems = verify(tmp_path)
    assert len(problems) == 1 and problems[0].startswith("shard-000001.dwmc")
    with pytest.raises(CorruptShard, match="shard-000001.dwmc"):
        VideoDataset.load(tmp_path)
    # Even with the checksum check skipped, the record's own CRC catches it.
    with pytest.raises(CorruptShard, match="shard-000001.dwmc"):
        read_shard(tmp_path, read_manifest(tmp_path)["shards"][1], verify=False)
    assert main(["pretrain", "verify", str(tmp_path)]) == 1
    assert "corrupt shard: shard-000001.dwmc" in capsys.readouterr().err
    path.write_bytes(bytes(data[:100]))  # truncated: a resume refuses to build on it
    with pytest.raises(CorruptShard, match="shard-000001.dwmc"):
        collect(tiny_cfg, tmp_path, frames=3 * FRAMES_PER_EPISODE, workers=0)


def test_resume_refuses_a_different_request(tmp_path, tiny_cfg):
    collect(tiny_cfg, tmp_path, frames=FRAMES_PER_EPISODE, workers=0)
    with pytest.raises(ValueError, match="scheme"):
        collect(tiny_cfg, tmp_path, frames=FRAMES_PER_EPISODE, workers=0, scheme="B")
    with pytest.raises(ValueError, match="target_frames"):
        collect(tiny_cfg, tmp_path, frames=2 * FRAMES_PER_EPISODE, workers=0)
    # The same request again is a no-op resume.
    again = collect(tiny_cfg, tmp_path, frames=FRAMES_PER_EPISODE, workers=0)
    assert again["new_frames"] == 0 and again["frames"] == FRAMES_PER_EPISODE


def test_killed_collection_resumed_on_ray_equals_uninterrupted(tmp_path, tiny_cfg):
    shards = 6
    frames = shards * FRAMES_PER_EPISODE - 10  # the last episode is still collected whole
    reference = collect(tiny_cfg, tmp_path / "ref", frames=frames, workers=0)
    assert reference["shards"] == shards and reference["frames"] == shards * FRAMES_PER_EPISODE

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "pretrain", "collect", "--config", "tiny",
         "--frames", str(frames), "--out", str(out), "--workers", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    try:
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no shard reached the manifest in 90 s"
            try:
                if read_manifest(out)["shards"]:
                    break
            except ManifestError:
                pass  # not written yet
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    at_kill = read_manifest(out)
    assert 1 <= len(at_kill["shards"]) < shards, "the collection was not interrupted mid-way"
    assert not at_kill["complete"]

    resumed = collect(tiny_cfg, out, frames=frames, workers=2)  # real local Ray
    assert resumed["new_frames"] == reference["frames"] - at_kill["frames"]
    assert resumed["frames"] == reference["frames"]
    assert _shard_table(out) == _shard_table(tmp_path / "ref")  # same seeds, same bytes
    assert len({e[0] for e in _shard_table(out)}) == shards  # no duplicates
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "ref")
                                                          .iterdir())  # no leftovers
    assert read_manifest(out)["complete"]


def test_collect_cli_and_policy_checkpoint_errors(tmp_path, tiny_cfg):
    assert main(["pretrain", "collect", "--config", "tiny", "--frames", "0",
                 "--out", str(tmp_path / "a"), "--workers", "0"]) == 2
    assert main(["pretrain", "collect", "--config", "tiny", "--frames", "10", "--out",
                 str(tmp_path / "b"), "--workers", "0", "--policy", str(tmp_path / "nope.pt")]) == 2
    cfg = replace(tiny_cfg, pretrain={"source_task": "dmc:reacher_easy"})
    summary = collect(cfg, tmp_path / "c", frames=FRAMES_PER_EPISODE, workers=0)
    assert read_manifest(tmp_path / "c")["task"] == "dmc:reacher_easy"
    assert summary["frames"] == FRAMES_PER_EPISODE
