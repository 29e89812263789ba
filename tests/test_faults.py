"""Faults that must not end a run: non-finite data and weights (real redis-server, tiny preset).

Each test was seen failing on the code before its fix."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import redis
import torch
from prometheus_client import REGISTRY

from diswm.broadcast import BadWeights, WeightStore
from diswm.presets import load_config
from learner import Learner
from replay_service.chunks import Chunk
from replay_service.client import ReplaySpec, ReplayWriter, read_meta

A = 6


def spec_for(server) -> ReplaySpec:
    return ReplaySpec(port=server.port, password=server.password,
                      namespace=uuid.uuid4().hex[:8], capacity=10_000, chunk_length=8,
                      wait_timeout=10.0)


def chunk_data(n: int = 8, **bad) -> dict[str, np.ndarray]:
    first = np.zeros(n, bool)
    first[0] = True
    data = {"image": np.zeros((n, 8, 8, 3), np.uint8), "action": np.zeros((n, 3), np.float32),
            "reward": np.ones(n, np.float32), "is_first": first, "is_last": np.zeros(n, bool),
            "is_terminal": np.zeros(n, bool), "discount": np.ones(n, np.float32),
            "policy_version": np.zeros(n, np.int64)}
    for key, value in bad.items():
        data[key] = data[key].copy()
        data[key][3] = value
    return data


@pytest.mark.parametrize(("field", "value", "count"), [
    ("reward", np.nan, 1), ("reward", np.inf, 1), ("action", -np.inf, 3), ("discount", np.nan, 1)])
def test_the_chunk_insert_path_refuses_non_finite_values(server, field, value, count):
    spec = spec_for(server)
    writer = ReplayWriter(spec)
    writer.insert_chunk(Chunk("s0", 0, chunk_data()))  # a finite chunk is stored
    with pytest.raises(ValueError, match=rf"stream 's0', chunk 1: field '{field}' has {count} "
                                         "non-finite value"):
        writer.insert_chunk(Chunk("s0", 1, chunk_data(**{field: value})))
    meta = read_meta(writer.client, spec)
    assert meta["inserts"] == 8 and meta["size_steps"] == 8  # the finite chunk only
    rejected = REGISTRY.get_sample_value("diswm_replay_rejected_steps_total",
                                         {"namespace": spec.namespace})
    assert rejected == 8


def make_batch(cfg, seed: int = 0, reward_nan: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    B, T = cfg.train.batch_size, cfg.train.batch_length
    first = np.zeros((B, T), bool)
    first[:, 0] = True
    reward = rng.normal(size=(B, T)).astype(np.float32)
    if reward_nan:
        reward[1, 3] = np.nan
    return {"image": rng.integers(0, 256, (B, T, 64, 64, 3), dtype=np.uint8),
            "action": rng.uniform(-1, 1, (B, T, A)).astype(np.float32), "reward": reward,
            "is_first": first, "is_last": np.zeros((B, T), bool),
            "is_terminal": np.zeros((B, T), bool), "policy_version": np.zeros((B, T), np.int64)}


def snapshot(learner: Learner) -> tuple[dict, dict]:
    weights = {k: v.clone() for k, v in learner.state_dict().items()}
    opts = {name: {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                   for i, s in opt.state_dict()["state"].items()}
            for name, opt in learner.opts.items()}
    return weights, opts


def same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(same(a[k], b[k]) if isinstance(a[k], dict) else
               (torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k]) for k in a)


def test_an_update_whose_loss_is_not_finite_changes_nothing_and_is_counted():
    cfg = load_config(["tiny"])
    learner = Learner(cfg, A)
    learner.update(make_batch(cfg, 0))
    before = snapshot(learner)
    out = learner.update(make_batch(cfg, 1, reward_nan=True))
    assert out["skipped"] == 1 and out["skipped_updates"] == 1
    assert not np.isfinite(out["model_loss"])
    assert learner.updates == 1 and learner.version == 1 and learner.skipped_updates == 1
    after = snapshot(learner)
    assert same(before[0], after[0]), "a non-finite update changed the weights"
    assert same(before[1], after[1]), "a non-finite update changed the optimizer state"
    out = learner.update(make_batch(cfg, 2))  # training goes on with the next finite batch
    assert out["skipped"] == 0 and out["skipped_updates"] == 1 and learner.updates == 2
    assert not same(before[0], snapshot(learner)[0])
    assert all(torch.isfinite(v).all() for v in learner.state_dict().values())


def test_the_skip_count_survives_a_resume(tmp_path):
    cfg = load_config(["tiny"])
    learner = Learner(cfg, A)
    learner.update(make_batch(cfg, 1, reward_nan=True))
    learner.update(make_batch(cfg, 2, reward_nan=True))
    learner.save(tmp_path / "l.pt")
    resumed, _ = Learner.from_checkpoint(tmp_path / "l.pt")
    assert resumed.skipped_updates == 2 and resumed.updates == 0


def test_non_finite_weights_are_never_published(redis_server):
    client = redis_server.client()
    store = WeightStore(client, "ns")
    state = {"w": torch.ones(3), "b": torch.zeros(2)}
    store.publish(4, state)
    with pytest.raises(BadWeights, match=r"not publishing version 5: tensor 'w' is not finite"):
        store.publish(5, {**state, "w": torch.tensor([1.0, float("inf"), 0.0])})
    version, fetched = store.fetch()
    assert version == 4 and store.version() == 4 and torch.equal(fetched["w"], state["w"])


# -- a run on a Redis it did not start (a namespace taken over) --------------------------------
@pytest.mark.parametrize("source", ["environment", "relative password_file"])
def test_every_command_works_on_a_run_that_took_over_a_redis(tmp_path, monkeypatch, capsys,
                                                            source):
    """Run A was SIGKILLed; its Redis lives on. Run B's `cluster up` points at that Redis with
    A's password, from $DISWM_REDIS_PASSWORD or a password file given relative to where it ran.
    Later commands on B ran without that (another shell, another directory) and failed with
    "no Redis password": the state file did not say where the password is."""
    import ray

    from ops.cli import main
    from ops.runtime.cluster import Cluster
    from replay_service.server import RedisServer

    ns = f"takeover-{uuid.uuid4().hex[:6]}"
    with RedisServer(tmp_path / "run-a" / "redis", persistence="none") as redis_a:
        overrides = [f"replay.port={redis_a.port}", f"replay.namespace={ns}", "runtime.actors=0"]
        up_dir = tmp_path / "ops-shell"
        up_dir.mkdir()
        monkeypatch.chdir(up_dir)
        if source == "environment":
            monkeypatch.setenv("DISWM_REDIS_PASSWORD", redis_a.password)
        else:
            (up_dir / "a.password").write_text(redis_a.password + "\n")
            overrides.append("replay.password_file=a.password")
        cfg = load_config(["tiny"], overrides)
        run_b = tmp_path / "run-b"
        run_b.mkdir()
        cfg.save(run_b / "config.yaml")
        cluster = Cluster.create(cfg, run_b, num_cpus=2)
        try:
            # Another shell in another directory: no variable, no relative file.
            monkeypatch.delenv("DISWM_REDIS_PASSWORD", raising=False)
            monkeypatch.chdir(tmp_path)
            assert redis_a.password.encode() not in (run_b / "cluster.json").read_bytes()
            attached = Cluster.attach(run_b)
            assert attached.spec.password == redis_a.password
            assert attached.status()["replay"] is not None
            capsys.readouterr()
            assert main(["replay", "check", str(run_b)]) == 0, capsys.readouterr().err
            assert "consistent" in capsys.readouterr().out
        finally:
            cluster.shutdown()
            if ray.is_initialized():
                ray.shutdown()


# -- nobody watched the watcher -----------------------------------------------------------------
def test_redis_and_its_supervisor_killed_together_come_back(tmp_path):
    """SIGKILL of Redis's supervisor and redis-server together left nothing to restart them:
    actors and learner crashed on connection refused until a person restarted Redis. Now a
    keeper the cluster runs in Ray (restarted by Ray itself) starts the supervisor again, from
    the same config and AOF, and a deliberate stop is left alone."""
    import os
    import signal

    import ray
    from support import wait_for

    from diswm.rediskit import probe
    from ops.runtime.cluster import Cluster

    cfg = load_config(["tiny"], ["runtime.actors=0", "replay.fsync=always",
                                 f"replay.namespace=keep-{uuid.uuid4().hex[:6]}"])
    run = tmp_path / "run"
    run.mkdir()
    cfg.save(run / "config.yaml")
    cluster = Cluster.create(cfg, run, num_cpus=2)
    try:
        spec = cluster.spec
        cluster.redis_client().set(f"diswm:{spec.namespace}:probe", "kept")
        supervisor, server = cluster.redis._proc.pid, cluster.redis.server_pid()
        os.kill(supervisor, signal.SIGKILL)  # the watcher first, so it cannot restart Redis
        os.kill(server, signal.SIGKILL)

        def answers():
            try:
                return probe(spec.host, spec.port, spec.password).get(
                    f"diswm:{spec.namespace}:probe")
            except Exception:  # noqa: BLE001 - refused while it is down
                return None

        assert wait_for("Redis to come back", answers, timeout=60) == b"kept"
        log = (run / "redis" / "supervisor.log").read_text()
        assert "keeper: the supervisor and redis-server are gone" in log, log
        assert cluster.redis.server_pid() != server
        assert ray.get(cluster.keeper().check_now.remote(), timeout=30) == ["running"]
        try:  # a deliberate stop, as `cluster down` sends (a probe: no retries)
            probe(spec.host, spec.port, spec.password).shutdown()
        except redis.ConnectionError:
            pass  # Redis closes the connection as it exits
        assert wait_for("the stop to be recorded",
                        lambda: (run / "redis" / "supervisor.exit").exists(), timeout=30)
        assert ray.get(cluster.keeper().check_now.remote(), timeout=30) == ["stopped"]
        assert answers() is None
        cluster.redis.start()  # for the shutdown below, which stops it again
    finally:
        cluster.shutdown()
        if ray.is_initialized():
            ray.shutdown()
