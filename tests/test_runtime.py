"""The distributed runtime on a real local Ray and a real redis-server, tiny preset.

One cluster serves the module; the tests run in file order and each says what it waits for.
Waits are polls with deadlines on observable state, never fixed sleeps.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import numpy as np
import pytest
import ray
import torch
from support import wait_for

from diswm.broadcast import WeightStore
from diswm.control import RunControl
from diswm.presets import load_config
from ops.runtime.cluster import Cluster, action_dim_of
from ops.runtime.monitor import query, start_prometheus, wait_ready
from replay_service.client import ReplaySpec, read_meta
from replay_service.server import RedisServer, free_port

STEPS = 30_000
SWITCH_AT = 0.1  # colour scheme B from env step 3000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    cfg = load_config(["tiny"], [
        f"train.steps={STEPS}", f"distraction.switch_at={SWITCH_AT}", "runtime.actors=2",
        "train.eval_every=1000000", "train.checkpoint_every=300", "replay.wait_timeout=60",
        f"replay.namespace=test-{uuid.uuid4().hex[:6]}"])
    cfg.save(run_dir / "config.yaml")
    c = Cluster.create(cfg, run_dir, num_cpus=8)
    c.start_learner(action_dim_of(cfg))
    c.scale(2)
    yield c
    c.shutdown()


def learner_stats(c: Cluster) -> dict:
    return ray.get(c.learner().stats.remote(), timeout=60)


def actor_stats(c: Cluster, name: str) -> dict:
    return ray.get(ray.get_actor(name, namespace=c.namespace).stats.remote(), timeout=60)


def test_actors_insert_learner_trains_and_weights_reach_actors(cluster):
    meta = wait_for("replay inserts", lambda: (m := cluster.replay_meta())["inserts"] > 0 and m)
    assert meta["size_steps"] > 0
    wait_for("learner updates", lambda: learner_stats(cluster)["updates"] >= 5)
    first = {n: actor_stats(cluster, n)["policy_version"] for n in cluster.actor_names()}
    # New policy versions reach every actor: their versions rise past what they had.
    for name, version in first.items():
        wait_for(f"{name}'s policy version to rise above {version}",
                 lambda n=name, v=version: actor_stats(cluster, n)["policy_version"] > v)
    assert learner_stats(cluster)["error"] is None


def test_actors_step_at_idle_cpu_priority_and_the_learner_at_normal(cluster):
    # Read from the kernel, not from the actors' own account (diswm/priority.py).
    for name in cluster.actor_names():
        stats = actor_stats(cluster, name)
        assert os.sched_getscheduler(stats["loop_tid"]) == os.SCHED_IDLE, name
    stats = learner_stats(cluster)
    assert os.sched_getscheduler(stats["loop_tid"]) == os.SCHED_OTHER
    assert os.getpriority(os.PRIO_PROCESS, stats["loop_tid"]) < 19


def _get_json(url: str) -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_prometheus_scrapes_a_positive_env_steps_rate(cluster):
    port = free_port()
    proc = start_prometheus(cluster.run_dir, port, scrape_interval="1s")
    try:
        wait_ready(port)

        def rate():
            result = query(port, "sum(rate(diswm_actor_env_steps_total[10s]))")
            return result and float(result[0]["value"][1]) > 0 and result

        result = wait_for("a positive env-steps rate in Prometheus", rate, timeout=90, every=1)
        assert float(result[0]["value"][1]) > 0
        updates = query(port, "sum(diswm_learner_updates_total)")
        assert updates and float(updates[0]["value"][1]) > 0
        roles = {r["metric"]["role"] for r in query(port, "up == 1")}
        assert roles == {"learner", "actor"}
        rules = _get_json(f"http://127.0.0.1:{port}/api/v1/rules")["data"]["groups"]
        loaded = {r["name"]: r["health"] for g in rules for r in g["rules"]}
        assert len(loaded) == 9 and "DiswmRunStalled" in loaded, loaded  # deploy/alerts.yml
        assert all(health in ("ok", "unknown") for health in loaded.values()), loaded
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_scaling_2_to_1_to_3_keeps_everything_running(cluster):
    before = cluster.replay_meta()
    updates = learner_stats(cluster)["updates"]
    assert cluster.scale(1) == ["actor-0"]
    after = cluster.replay_meta()
    assert after["inserts"] >= before["inserts"] and after["size_steps"] >= before["size_steps"]
    wait_for("training to go on with one actor",
             lambda: learner_stats(cluster)["updates"] > updates)
    assert cluster.scale(3) == ["actor-0", "actor-1", "actor-2"]
    steps = actor_stats(cluster, "actor-2")["env_steps"]
    wait_for("the new actor to step", lambda: actor_stats(cluster, "actor-2")["env_steps"] > steps)
    assert learner_stats(cluster)["running"]


def test_scaling_past_the_cpus_is_refused_at_once(cluster):
    """Asking for more actors than Ray has CPUs used to hang 3 minutes and end in a raw
    GetTimeoutError with an actor left pending; now it is refused up front, saying how many fit,
    and nothing changes."""
    before = cluster.actor_names()
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"so \d+ actors fit.*ray start --address"):
        cluster.scale(64)
    assert time.monotonic() - start < 30
    assert cluster.actor_names() == before


def test_the_redis_password_is_in_no_config_state_or_checkpoint(cluster):
    """A password once ended up in config.yaml (0644), cluster.json and every checkpoint."""
    wait_for("a checkpoint", lambda: list((cluster.run_dir / "checkpoints").glob("*.pt")))
    secret = cluster.spec.password.encode()
    assert len(secret) >= 16
    files = [cluster.run_dir / "config.yaml", cluster.run_dir / "cluster.json",
             *(cluster.run_dir / "checkpoints").glob("*.pt")]
    for path in files:
        assert secret not in path.read_bytes(), path


def test_replay_check_on_a_live_cluster(cluster, capsys):
    """`diswm replay check RUN` while actors insert and the learner samples: consistent."""
    from ops.cli import main

    assert main(["replay", "check", str(cluster.run_dir)]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("consistent") and "PROBLEM" not in out


def test_killed_actor_comes_back_with_current_weights(cluster):
    control = RunControl(cluster.redis_client(), cluster.namespace)
    restarts = control.counters()["actor_restarts"]
    old_pid = ray.get(ray.get_actor("actor-1", namespace=cluster.namespace).pid.remote())
    os.kill(old_pid, signal.SIGKILL)

    def back():
        try:
            stats = actor_stats(cluster, "actor-1")
        except ray.exceptions.RayError:
            return None  # restarting
        return stats["pid"] != old_pid and stats["env_steps"] > 0 and stats

    stats = wait_for("actor-1 to be restarted and stepping", back, timeout=180)
    assert control.counters()["actor_restarts"] == restarts + 1
    published = WeightStore(cluster.redis_client(), cluster.namespace).version()
    assert stats["policy_version"] > 0 and stats["policy_version"] <= published


def test_scheme_switches_at_the_midpoint_for_every_env(cluster):
    switch = SWITCH_AT * STEPS
    wait_for("the learner to switch to scheme B",
             lambda: learner_stats(cluster)["scheme"] == "B", timeout=240)
    assert RunControl(cluster.redis_client(), cluster.namespace).counters()["env_steps"] >= switch
    for name in cluster.actor_names():
        wait_for(f"{name} to act in scheme B",
                 lambda n=name: actor_stats(cluster, n)["scheme"] == "B")


def test_restarted_learner_resumes_from_its_checkpoint(cluster):
    from diswm.runfolder import CHECKPOINT

    ckpt = cluster.run_dir / CHECKPOINT
    wait_for("a learner checkpoint", ckpt.exists)
    handle = cluster.learner()
    old_pid = ray.get(handle.pid.remote())
    os.kill(old_pid, signal.SIGKILL)

    def back():
        try:
            stats = learner_stats(cluster)
        except ray.exceptions.RayError:
            return None
        return stats["pid"] != old_pid and stats

    stats = wait_for("the learner to come back", back, timeout=180)
    assert stats["updates"] > 0, "the restarted learner did not resume from its checkpoint"
    assert stats["scheme"] == "B"
    assert RunControl(cluster.redis_client(), cluster.namespace).counters()["learner_restarts"] == 1
    updates = stats["updates"]
    wait_for("training to continue", lambda: learner_stats(cluster)["updates"] > updates)


def test_a_non_finite_chunk_is_skipped_by_the_learner_and_surfaced(cluster, monkeypatch):
    """One NaN reward in the replay (here from a writer without the finite check) made every
    loss, gradient and weight NaN within 15 updates and crashed every actor. Now the learner
    skips each update it poisons, publishes only finite weights, and the status says so."""
    import replay_service.writer as writer_module
    from replay_service.chunks import Chunk
    from replay_service.client import ReplaySampler, ReplayWriter

    sampler = ReplaySampler(cluster.spec)
    seq = sampler.sample(1, cluster.spec.chunk_length)
    sampler.close()
    data = {k: np.ascontiguousarray(v[0]) for k, v in seq.items()}
    data["is_first"][:] = False
    data["is_first"][0] = True
    data["is_last"][:] = False
    data["reward"][2] = np.nan
    monkeypatch.setattr(writer_module, "check_finite", lambda chunk: None)
    writer = ReplayWriter(cluster.spec)
    for index in range(8):  # eight poisoned chunks: some batch soon holds one
        writer.insert_chunk(Chunk("foreign-0", index, {k: v.copy() for k, v in data.items()}),
                            force=True)
    writer.client.close()
    stats = wait_for("the learner to skip a poisoned update",
                     lambda: (s := learner_stats(cluster))["skipped_updates"] > 0 and s,
                     timeout=240)
    updates = stats["updates"]
    wait_for("training to go on past the skipped update",
             lambda: learner_stats(cluster)["updates"] > updates + 5)
    _, weights = WeightStore(cluster.redis_client(), cluster.namespace).fetch()
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())
    for name in cluster.actor_names():
        assert actor_stats(cluster, name)["running"], name
    problems = cluster.status()["problems"]
    assert any("update(s) skipped because their loss or gradients were not finite" in p
               for p in problems), problems


def test_status_and_replay_check_answer_while_redis_hangs(cluster, capsys):
    """With redis-server stopped (SIGSTOP), `cluster status` took 114 s and `replay check` 105 s
    (60 s socket timeouts, retried, then 30 s per Ray call). Both must answer at once and say
    that Redis is not responding. The bound is a hang guard, not a timing."""
    from ops.cli import main

    pid = cluster.redis.server_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        status = cluster.status()
        status_seconds = time.monotonic() - start
        start = time.monotonic()
        code = main(["replay", "check", str(cluster.run_dir)])
        check_seconds = time.monotonic() - start
    finally:
        os.kill(pid, signal.SIGCONT)
    err = capsys.readouterr().err
    with capsys.disabled():
        print(f"\nwhile Redis is stopped: cluster status {status_seconds:.1f} s, replay check "
              f"{check_seconds:.1f} s")
    assert status["healthy"] is False
    assert any("is not responding" in p for p in status["problems"]), status["problems"]
    assert status["learner"]["updates"] is not None  # the learner answers with what it knows
    assert code != 0 and "diswm: error: redis at" in err and "is not responding" in err, err
    assert status_seconds < 20 and check_seconds < 20, (status_seconds, check_seconds)
    def answering():
        st = cluster.status()
        return st["replay"] is not None and not any("redis at" in p for p in st["problems"])

    wait_for("Redis to answer again", answering, timeout=120)


def test_actor_stop_flushes_partial_episodes(tmp_path):
    """Nothing an actor stepped is lost when it stops: every step is in the replay after close."""
    from actors.worker import ActorWorker

    cfg = load_config(["tiny"], ["runtime.envs_per_actor=2", "replay.chunk_length=16"])
    with RedisServer(tmp_path / "redis", persistence="none") as server:
        spec = ReplaySpec.from_config(cfg, port=server.port, password=server.password)
        worker = ActorWorker(cfg, 0, spec)
        for _ in range(37):
            worker.step()
        stepped = 2 + 2 * 37 + worker.episodes  # initial obs + steps + reset obs per episode
        assert read_meta(worker.writer.client, spec)["inserts"] < stepped  # open chunks
        worker.close()
        assert read_meta(server.client(), spec)["inserts"] == stepped


def test_actor_worker_compiles_its_policy_when_asked(tmp_path):
    """`runtime.policy_compile=true`: the actor acts with the compiled policy step once the run
    has weights; off (the default), the policy stays eager."""
    from actors.worker import ActorWorker
    from learner.learner import Learner

    for flag, want in (("true", "compiled"), ("false", "eager")):
        cfg = load_config(["tiny"], [f"runtime.policy_compile={flag}", "train.prefill=0"])
        with RedisServer(tmp_path / f"redis-{flag}", persistence="none") as server:
            spec = ReplaySpec.from_config(cfg, port=server.port, password=server.password)
            learner = Learner(cfg, action_dim_of(cfg))
            WeightStore(server.client(), spec.namespace).publish(*learner.get_weights("policy"))
            worker = ActorWorker(cfg, 0, spec)
            for _ in range(3):
                worker.step()
            assert worker.policy.version == learner.version
            assert worker.policy.compile_state == want
            worker.close()


def test_actor_worker_matches_a_plain_env_loop(tmp_path):
    """The actor's envs produce what a plain loop over make_env with the same seed produces."""
    from actors.worker import ActorWorker
    from diswm.envs import make_env

    cfg = load_config(["tiny"])
    with RedisServer(tmp_path / "redis", persistence="none") as server:
        spec = ReplaySpec.from_config(cfg, port=server.port, password=server.password)
        worker = ActorWorker(cfg, 3, spec)
        seed = cfg.train.seed * 1_000_003 + 3 * 1000
        with make_env(cfg.env, cfg.distraction, seed=seed) as env:
            np.testing.assert_array_equal(env.reset()["image"], worker.obs[0]["image"])
        worker.close()


@pytest.mark.slow
def test_cluster_commands_on_a_ray_head(tmp_path):
    """`diswm cluster up | scale | status | down` (the make targets) against `ray start --head`."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).parent / "diswm")
    run = str(tmp_path / "cluster")

    def diswm(*args, timeout=300):
        result = subprocess.run([exe, *args, "--run-dir", run], capture_output=True, text=True,
                                timeout=timeout)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    diswm("cluster", "up", "--actors", "2", "--config", "tiny", "--set", "train.steps=1000000")
    try:
        assert (tmp_path / "cluster" / "ray.token").stat().st_mode & 0o077 == 0

        def status():
            return json.loads(diswm("cluster", "status", "--json").stdout)

        wait_for("the cluster to train", lambda: (status()["learner"] or {}).get("updates", 0) > 0)
        diswm("cluster", "scale", "3")
        assert len(status()["actors"]) == 3
    finally:
        diswm("cluster", "down")
    assert not (tmp_path / "cluster" / "cluster.json").exists()
    assert (tmp_path / "cluster" / "checkpoints" / "latest.pt").exists()
