"""deploy/README.md's multi-machine steps, on one machine: a password-protected Redis, a Ray head
and a second Ray node (`ray start --address`, its own raylet and resources) sharing the run's
token, then `diswm cluster up` pointed at both, with the actors pinned to the second node.

Marked `two_nodes` (about two minutes): `make test-two-nodes`, which CI runs after `make test`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest
import torch
from support import wait_for as poll

from diswm.models import VideoModel
from diswm.presets import load_config
from replay_service.client import ReplaySpec, read_meta
from replay_service.server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
pytestmark = pytest.mark.two_nodes


def start(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    with log.open("wb") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(20)
            return
        except subprocess.TimeoutExpired:
            continue


def diswm(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ops", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_actors_on_a_second_ray_node_fill_the_replay_and_the_targets_file(tmp_path):
    token = tmp_path / "ray.token"
    token.write_text(os.urandom(32).hex())
    token.chmod(0o600)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "RAY_USAGE_STATS_ENABLED": "0"}
    # 1. Redis that every node reaches, with a password (in a file) and persistence.
    redis = RedisServer(tmp_path / "redis", persistence="aof").start()
    password_file = tmp_path / "redis.pw"
    password_file.write_text(redis.password + "\n")
    password_file.chmod(0o600)
    procs: list[subprocess.Popen] = []
    run = tmp_path / "run"
    # A distilling run: the actors on node 2 fetch the teacher through Redis, not the file.
    teacher = tmp_path / "teacher.pt"
    torch.manual_seed(0)
    torch.save({"video_model": VideoModel(load_config(["tiny"]).model).state_dict()}, teacher)
    address = ""
    try:
        # 2. Ray: the head, then a second node with its own raylet and a custom resource.
        head_log, node_log = tmp_path / "head.log", tmp_path / "node2.log"
        procs.append(start([RAY, "start", "--head", f"--port={free_port()}", "--num-cpus=4",
                            "--include-dashboard=false", "--disable-usage-stats", "--block"],
                           head_log, env))
        address = poll("the head's address", lambda: (m := re.search(
            r"ray start --address='([^']+)'", head_log.read_text(errors="replace")))
            and m.group(1), timeout=120)
        procs.append(start([RAY, "start", f"--address={address}", "--num-cpus=2",
                            '--resources={"node2": 2}',
                            f"--dashboard-agent-listen-port={free_port()}", "--block"],
                           node_log, env))
        poll("the second node", lambda: "will now block forever" in node_log.read_text(
            errors="replace"), timeout=120)
        # 3. The run, pointed at both (the learner needs 3 CPUs: only the head has them; its
        #    evaluation actor takes the head's fourth).
        up = diswm("cluster", "up", "--actors", "2", "--config", "tiny", "--run-dir", str(run),
                   "--set", f"runtime.ray_address={address}", "replay.host=127.0.0.1",
                   f"replay.port={redis.port}", f"replay.password_file={password_file}",
                   "runtime.actor_resources=node2=1", "runtime.learner_cpus=3",
                   "train.steps=1000000", "train.eval_every=1000000",
                   "replay.namespace=two-nodes", f"distill.teacher={teacher}", env=env)
        assert up.returncode == 0, up.stderr[-3000:]
        spec = ReplaySpec(port=redis.port, password=redis.password, namespace="two-nodes")
        client = redis.client()
        poll("steps from the second node's actors", lambda: read_meta(client, spec)["inserts"])
        # Their steps carry the teacher's latents, computed on node 2.
        assert "z_teacher" in json.loads(client.get("diswm:two-nodes:schema"))
        status = diswm("cluster", "status", "--json", "--run-dir", str(run), env=env)
        assert status.returncode == 0, status.stdout[-2000:] + status.stderr[-2000:]
        state = json.loads(status.stdout)
        nodes = {a["node"] for a in state["actors"]}
        assert len(state["actors"]) == 2 and len(nodes) == 1 and None not in nodes
        assert state["learner"]["node"] not in nodes  # actors on node 2, the learner on the head
        # 4. Metrics: the targets file lists every actor, and each one serves its counters.
        targets = json.loads((run / "prometheus" / "targets.json").read_text())
        endpoints = [t for group in targets for t in group["targets"]]
        assert len(endpoints) >= 3, targets  # the learner and both actors
        scraped = 0
        for endpoint in endpoints:
            body = urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=10).read()
            scraped += b"diswm_actor_env_steps_total{" in body
        assert scraped == 2
        down = diswm("cluster", "down", "--run-dir", str(run), env=env)
        assert down.returncode == 0, down.stderr[-2000:]
    finally:
        for proc in reversed(procs):
            stop(proc)
        redis.stop()
        # `ray start --head` recorded this cluster as the machine's current one: forget it, as
        # `ray stop` would, so that a later `ray.init()` does not try to join a dead cluster.
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if current.exists() and address and current.read_text().strip() == address:
            current.unlink()
