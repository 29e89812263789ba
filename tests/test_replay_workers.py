"""Sampler processes (replay_service/workers.py) against a real redis-server: exact steps, exact
counts, held batches never refilled, a killed worker replaced, errors said, nothing left behind."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_replay import check_batch, episodes, metric, spec_for

from replay_service.client import ReplayTimeout, ReplayWriter, read_meta
from replay_service.workers import SamplerPool, _shm_dir, remove_stale_segments


def filled(server, **kw):
    spec = spec_for(server, chunk_length=16, block_steps=4, **kw)
    writer = ReplayWriter(spec)
    for stream in range(3):
        for step in episodes(stream, [37, 9, 50], stream * 1000, size=32):
            writer.add(f"a{stream}", step)
    return spec


def pool_files(pool: SamplerPool) -> list[str]:
    return sorted(p.name for p in _shm_dir().glob(f"{pool._stem}*"))


def test_pool_batches_are_exact_steps_and_counted_exactly(server):
    spec = filled(server)
    before = metric("diswm_replay_sampled_sequences_total", spec.namespace)
    with SamplerPool(spec, 2, 12, 20, seed=5, cache_chunks=0) as pool:
        got = 0
        for batch in pool.batches(7):
            assert all(v.flags.c_contiguous and v.shape[:2] == (12, 20) for v in batch.values())
            check_batch(batch, size=32)
            got += 1
        assert got == 7
        # batches(n) asks for exactly n: the limiter counted 7 x 12 sequences, no more.
        assert read_meta(server.client(), spec)["samples"] == 7 * 12
        assert metric("diswm_replay_sampled_sequences_total", spec.namespace) - before == 84
        assert pool.stats()["restarts"] == 0


def test_two_workers_sample_different_sequences(server):
    spec = filled(server)
    with SamplerPool(spec, 2, 8, 10, seed=1, cache_chunks=0) as pool:
        starts = [tuple(b["state"][:, 0, 0]) for b in pool.batches(4)]
    assert len(set(starts)) == 4  # each worker has its own seed


def test_a_held_batch_is_never_refilled(server):
    """A batch, one of its arrays, a view, or a tensor made from it stays as it was while the
    workers fill later batches."""
    spec = filled(server)
    with SamplerPool(spec, 2, 8, 6, seed=2, cache_chunks=0, depth=2) as pool:
        kept = pool.sample()
        image = pool.sample()["image"]
        view = pool.sample()["state"][2:5]
        tensor = torch.from_numpy(pool.sample()["reward"])
        copies = ({k: v.copy() for k, v in kept.items()}, image.copy(), view.copy(),
                  tensor.clone())
        for _ in range(16):
            check_batch(pool.sample(), size=32)  # dropped at once: their slots are filled again
        for key, value in copies[0].items():
            np.testing.assert_array_equal(kept[key], value)
        np.testing.assert_array_equal(image, copies[1])
        np.testing.assert_array_equal(view, copies[2])
        assert torch.equal(tensor, copies[3])
        check_batch(kept, size=32)
        assert pool.stats()["slots"] <= 2 * (2 + 2) + 4


def test_a_killed_worker_is_replaced_and_loses_nothing_handed_out(server, caplog):
    spec = filled(server)
    with SamplerPool(spec, 2, 6, 8, seed=3, cache_chunks=0) as pool:
        kept = pool.sample()
        copy = {k: v.copy() for k, v in kept.items()}
        victim = pool._workers[0].process
        dead_stem = pool._workers[0].stem
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(timeout=10)
        for _ in range(8):
            check_batch(pool.sample(timeout=60), size=32)
        assert pool.restarts == 1
        assert metric("diswm_replay_sampler_restarts_total", spec.namespace) == 1
        assert "sampler worker 0 exited with code -9" in caplog.text
        assert not list(_shm_dir().glob(f"{dead_stem}-*"))  # its slot files are gone
        for key, value in copy.items():  # the batch it had filled is still intact
            np.testing.assert_array_equal(kept[key], value)


def test_a_worker_that_cannot_reach_the_replay_is_an_error_at_start(server):
    spec = dataclasses.replace(filled(server), password="wrong-password")
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="sampler worker 0 could not start: .*"
                                           "(password|Authentication|auth)"):
        SamplerPool(spec, 2, 4, 4)
    assert time.monotonic() - start < 60
    assert not [p for p in _shm_dir().glob(f"diswm-replay-{os.getpid()}-*")]


def test_a_replay_too_small_times_out_and_close_is_prompt(server):
    spec = filled(server, min_size=10_000, wait_timeout=1.0)
    pool = SamplerPool(spec, 2, 4, 4)
    start = time.monotonic()
    with pytest.raises(ReplayTimeout, match="fewer steps than the minimum"):
        pool.sample()
    assert time.monotonic() - start < 30
    patient = SamplerPool(dataclasses.replace(spec, wait_timeout=60.0), 1, 4, 4, patient=True)
    assert patient.get(timeout=0.5) is None  # nothing yet: the caller looks at its stop flag
    processes = [w.process for w in pool._workers + patient._workers]
    start = time.monotonic()
    patient.close()  # its worker waits on the limiter for up to 60 s; close does not
    pool.close()
    assert time.monotonic() - start < 20
    assert not any(p.is_alive() for p in processes)
    assert not pool_files(pool) and not pool_files(patient)
    with pytest.raises(RuntimeError, match="closed"):
        pool.get(0.1)


def test_slot_files_of_a_dead_pool_are_removed(tmp_path):
    dead = _shm_dir() / "diswm-replay-999999999-abcd-w0g0-s0"  # no such process
    mine = _shm_dir() / f"diswm-replay-{os.getpid()}-abcd-w0g0-s0"
    dead.write_bytes(b"x")
    mine.write_bytes(b"x")
    try:
        assert remove_stale_segments() >= 1
        assert not dead.exists() and mine.exists()
    finally:
        dead.unlink(missing_ok=True)
        mine.unlink(missing_ok=True)


def test_slot_files_are_private(server):
    spec = filled(server)
    with SamplerPool(spec, 1, 4, 4) as pool:
        pool.sample()
        files = list(_shm_dir().glob(f"{pool._stem}*"))
        assert files and all(f.stat().st_mode & 0o777 == 0o600 for f in files)


def test_a_config_can_ask_for_sampler_processes():
    from diswm.config import ConfigError
    from diswm.presets import load_config

    assert load_config(overrides=["replay.sample_workers=3"]).replay.sample_workers == 3
    with pytest.raises(ConfigError, match="replay.sample_workers"):
        load_config(overrides=["replay.sample_workers=-1"])


_OWNER = """
import sys, time
from replay_service.client import ReplaySpec
from replay_service.workers import SamplerPool
if __name__ == "__main__":
    spec = ReplaySpec(port=int(sys.argv[1]), password=sys.argv[2], namespace=sys.argv[3],
                      chunk_length=16, block_steps=4, min_size=10_000, wait_timeout=120.0)
    pool = SamplerPool(spec, 2, 4, 4, patient=True)
    pool.get(timeout=0.5)  # the workers now wait on the limiter (too few steps)
    print(" ".join(str(w.process.pid) for w in pool._workers), pool._stem, flush=True)
    time.sleep(600)
"""


def test_workers_of_a_killed_owner_exit_and_remove_their_files(server, tmp_path):
    """An owner killed with SIGKILL (a learner Ray kills) runs no cleanup; its workers, even
    ones waiting on the rate limiter, see it gone, exit and remove their files."""
    import subprocess
    import sys

    spec = filled(server)
    script = tmp_path / "owner.py"
    script.write_text(_OWNER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    owner = subprocess.Popen([sys.executable, str(script), str(spec.port), spec.password,
                              spec.namespace], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = owner.stdout.readline().split()
        pids, stem = [int(p) for p in line[:-1]], line[-1]
        assert len(pids) == 2 and all(Path(f"/proc/{p}").exists() for p in pids)
    finally:
        owner.kill()
        owner.wait(timeout=10)
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)], "sampler workers outlived their owner"
    assert not list(_shm_dir().glob(f"{stem}*"))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; its parent is gone and init reaps it
