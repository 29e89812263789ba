"""The run storage (diswm/storage.py): what goes up, what comes down, what never travels.

The multi-node behaviour (a learner restarted on a node that shares no disk with the first) is
tests/test_two_nodes.py's; these check the pieces on one machine, with the storage a plain
folder reached through fsspec's file:// backend, as an NFS mount would be."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from diswm.storage import RunStorage, scratch_dir, storage_name
from pretrain.collect import ShardSpec, collect_shard
from pretrain.video_shards import read_shard, store_shard


def make_run(folder):
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "latest.pt").write_bytes(os.urandom(4096))
    (folder / "train.csv").write_text("updates,loss\n1,0.5\n")
    (folder / "openloop").mkdir()
    (folder / "openloop" / "openloop_100.png").write_bytes(b"\x89PNG" + os.urandom(100))
    # never to travel: secrets and the driver's own state
    (folder / "cluster.json").write_text("{}")
    (folder / "redis").mkdir()
    (folder / "redis" / "redis.password").write_text("secret")
    (folder / "storage.json").write_text("{}")
    (folder / "checkpoints" / "latest.pt.tmp").write_bytes(b"torn")


def test_push_then_pull_gives_the_same_files_and_keeps_secrets_out(tmp_path):
    work, back = tmp_path / "work", tmp_path / "back"
    make_run(work)
    storage = RunStorage(f"file://{tmp_path / 'store'}", "run-1").check()
    sent = storage.push(work)
    assert sorted(sent) == ["checkpoints/latest.pt", "openloop/openloop_100.png", "train.csv"]
    assert storage.push(work) == []  # nothing changed, nothing sent
    with (work / "train.csv").open("a") as f:
        f.write("2,0.4\n")
    assert storage.push(work) == ["train.csv"]
    stored = sorted(p.relative_to(tmp_path / "store" / "run-1").as_posix()
                    for p in (tmp_path / "store" / "run-1").rglob("*") if p.is_file())
    assert stored == sorted(sent)  # no secret, no part file, no torn temporary
    got = RunStorage(str(tmp_path / "store"), "run-1").pull(back)  # a plain path works too
    assert sorted(got) == sorted(sent)
    for rel in sent:
        assert (back / rel).read_bytes() == (work / rel).read_bytes()
    assert not (back / "redis").exists() and not (back / "cluster.json").exists()


def test_pull_fetches_what_changed_and_can_leave_checkpoints(tmp_path):
    work, view = tmp_path / "work", tmp_path / "view"
    make_run(work)
    storage = RunStorage(str(tmp_path / "store"), "r")
    storage.push(work)
    reader = RunStorage(str(tmp_path / "store"), "r")
    assert "checkpoints/latest.pt" not in reader.pull(view, skip=("checkpoints/",))
    assert not (view / "checkpoints").exists()
    assert reader.pull(view, skip=("checkpoints/",)) == ["openloop/openloop_100.png"]  # images
    # may be rewritten at one size: fetched again; the CSV at its size is the same file
    (work / "checkpoints" / "latest.pt").write_bytes(os.urandom(4096))  # same size, new bytes
    storage.push(work)
    assert "checkpoints/latest.pt" in reader.pull(view)
    assert (view / "checkpoints" / "latest.pt").read_bytes() == (
        work / "checkpoints" / "latest.pt").read_bytes()


def test_a_storage_that_cannot_be_used_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"runtime.storage='nosuchproto://x'"):
        RunStorage("nosuchproto://x", "r")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match=r"runtime.storage=.*cannot create"):
        RunStorage(str(blocker), "r").check()


def test_each_run_folder_has_its_own_name_and_keeps_it(tmp_path):
    a, b = tmp_path / "x" / "run", tmp_path / "y" / "run"  # the same folder name twice
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    name_a, name_b = storage_name(a, "file:///s"), storage_name(b, "file:///s")
    assert name_a != name_b and name_a.startswith("run-") and name_b.startswith("run-")
    assert storage_name(a, "file:///s") == name_a  # the same run folder resumes its files
    assert json.loads((a / "storage.json").read_text()) == {"uri": "file:///s", "name": name_a}
    assert storage_name(a, "") == ""
    assert storage_name(a, "file:///elsewhere") != name_a  # another storage: a fresh name
    assert scratch_dir(name_a).name == name_a


def test_a_collector_returns_its_shard_and_the_driver_stores_it(tmp_path):
    """A collector on another node writes nothing there: the shard's bytes come back."""
    from diswm.presets import load_config

    cfg = load_config(["tiny"])
    data, entry = collect_shard(cfg.to_dict(), cfg.pretrain.source_task,
                                ShardSpec(index=3, seed=7, episodes=1), "", "lz4")
    assert list(tmp_path.iterdir()) == []
    full = store_shard(tmp_path, data, entry)
    path = tmp_path / full["file"]
    assert full["bytes"] == path.stat().st_size == len(data)
    assert full["checksum"] == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    arrays = read_shard(tmp_path, full)
    assert len(arrays["is_first"]) == full["frames"] and arrays["image"].dtype == np.uint8
