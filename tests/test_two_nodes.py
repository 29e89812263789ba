"""deploy/README.md's multi-machine steps, on one machine: a password-protected Redis, a Ray head
and a second Ray node (`ray start --address`, its own raylet and resources) sharing the run's
token, then `diswm cluster up` pointed at both, with the actors pinned to the second node.

The second test gives the second node a disk of its own: its raylet starts in a mount namespace
of its own (`unshare --mount`) with private tmpfs over the driver's folders and the learners'
scratch, so whatever it writes there is invisible to the head, and whatever the driver wrote
there is invisible to it, unless it travels through the run storage (runtime.storage) or Redis.

Marked `two_nodes` (about two minutes each): `make test-two-nodes`, which CI runs after
`make test`.
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


def ray_env(tmp_path: Path) -> dict:
    token = tmp_path / "ray.token"
    token.write_text(os.urandom(32).hex())
    token.chmod(0o600)
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_USAGE_STATS_ENABLED": "0"}


def start_head(tmp_path: Path, env: dict, *extra: str) -> tuple[subprocess.Popen, str]:
    head_log = tmp_path / "head.log"
    proc = start([RAY, "start", "--head", f"--port={free_port()}", "--include-dashboard=false",
                  "--disable-usage-stats", "--block", *extra], head_log, env)
    address = poll("the head's address", lambda: (m := re.search(
        r"ray start --address='([^']+)'", head_log.read_text(errors="replace")))
        and m.group(1), timeout=120)
    return proc, address


def forget_cluster(address: str) -> None:
    """`ray start --head` recorded this cluster as the machine's current one: forget it, as
    `ray stop` would, so that a later `ray.init()` does not try to join a dead cluster."""
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    if current.exists() and address and current.read_text().strip() == address:
        current.unlink()


def test_actors_on_a_second_ray_node_fill_the_replay_and_the_targets_file(tmp_path):
    env = ray_env(tmp_path)
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
        node_log = tmp_path / "node2.log"
        head, address = start_head(tmp_path, env, "--num-cpus=4")
        procs.append(head)
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
        forget_cluster(address)


# Holds CPUs of the head (its custom resource "head") until its stdin closes or it is killed.
HOLD = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
n = float(sys.argv[2])
hold = ray.remote(num_cpus=n, resources={"head": n})(type("Hold", (), {"ok": lambda self: 1}))
handle = hold.remote()
ray.get(handle.ok.remote())
print("held", flush=True)
sys.stdin.read()
"""

# Collects pretraining shards from the driver's machine with collectors on node 2.
COLLECT = """
import json, sys, ray
from diswm.presets import load_config
from pretrain.collect import collect
ray.init(address=sys.argv[1], log_to_driver=False)
cfg = load_config(["tiny"], ["runtime.actor_resources=node2=1"])
print(json.dumps(collect(cfg, sys.argv[2], frames=200, workers=2)))
"""


def test_a_learner_restarted_on_a_node_without_its_disk_resumes_from_the_storage(tmp_path):
    """The learner starts on node 2, which sees neither the driver's run folder nor the teacher
    file; node 2 then dies and Ray restarts the learner on the head, which never saw node 2's
    scratch. It resumes from the checkpoint the storage holds, at that checkpoint's update."""
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare --mount is not permitted here: {probe.stderr.decode()[:200]}")
    env = ray_env(tmp_path)
    private, scratch, storage = tmp_path / "private", tmp_path / "scratch", tmp_path / "storage"
    for folder in (private, scratch, storage):
        folder.mkdir()
    env["DISWM_SCRATCH"] = str(scratch)  # each node's learner scratch: private on node 2
    redis = RedisServer(tmp_path / "redis", persistence="aof").start()
    password_file = tmp_path / "redis.pw"
    password_file.write_text(redis.password + "\n")
    password_file.chmod(0o600)
    run, teacher = private / "run", private / "teacher.pt"
    torch.manual_seed(0)
    torch.save({"video_model": VideoModel(load_config(["tiny"]).model).state_dict()}, teacher)
    procs: list[subprocess.Popen] = []
    address = ""
    try:
        head, address = start_head(tmp_path, env, "--num-cpus=5", '--resources={"head": 5}')
        procs.append(head)
        node_log = tmp_path / "node2.log"
        node2 = start(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       'mount -t tmpfs -o mode=0700 tmpfs "$1" && '
                       'mount -t tmpfs -o mode=0700 tmpfs "$2" && '
                       'exec "$3" start --address="$4" --num-cpus=2 '
                       '--resources=\'{"node2": 2}\' --dashboard-agent-listen-port="$5" --block',
                       "sh", str(private), str(scratch), RAY, address, str(free_port())],
                      node_log, env)
        procs.append(node2)
        poll("the second node", lambda: "will now block forever" in node_log.read_text(
            errors="replace"), timeout=120)
        # 1. Collectors on node 2 hand their shards back: they land on the driver's disk.
        data = private / "data"
        got = subprocess.run([sys.executable, "-c", COLLECT, address, str(data)], env=env,
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert got.returncode == 0, got.stderr[-3000:]
        manifest = json.loads((data / "manifest.json").read_text())
        assert manifest["frames"] >= 200 and len(list(data.glob("shard-*"))) == len(
            manifest["shards"]) >= 2
        # 2. The head keeps 1 CPU for the actor and 1 for the evaluations; the learner (2 CPUs)
        #    fits only on node 2.
        holder = subprocess.Popen([sys.executable, "-c", HOLD, address, "3"], env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  start_new_session=True)
        procs.append(holder)
        assert holder.stdout.readline().strip() == b"held"
        up = diswm("cluster", "up", "--actors", "1", "--config", "tiny", "--run-dir", str(run),
                   "--set", f"runtime.ray_address={address}", "replay.host=127.0.0.1",
                   f"replay.port={redis.port}", f"replay.password_file={password_file}",
                   "runtime.actor_resources=head=1", "runtime.learner_cpus=2",
                   f"runtime.storage=file://{storage}", "train.steps=1000000",
                   "train.eval_every=200", "train.checkpoint_every=200",
                   "replay.namespace=own-disks", f"distill.teacher={teacher}", env=env)
        assert up.returncode == 0, up.stderr[-3000:]
        name = json.loads((run / "storage.json").read_text())["name"]
        stored = storage / name

        def state() -> dict:
            out = diswm("cluster", "status", "--json", "--run-dir", str(run), env=env)
            return json.loads(out.stdout) if out.stdout.strip() else {}

        try:
            poll("a checkpoint and an evaluation in the storage", lambda: (
                stored / "checkpoints" / "latest.pt").exists() and (
                stored / "eval.csv").exists(), timeout=240)
        except AssertionError as err:
            raise AssertionError(f"{err}; the run: {state()}; in the storage: "
                                 f"{sorted(p.name for p in stored.rglob('*'))}") from None
        first = state()
        head_node = first["actors"][0]["node"]
        assert first["learner"]["node"] not in (None, head_node)  # the learner is on node 2
        work = Path(first["learner"]["work_dir"])
        assert work.parent == scratch and not work.exists()  # node 2's scratch: not seen here
        assert not (run / "checkpoints").exists()  # nothing of the learner's in the run folder
        assert (run / "eval.csv").exists()  # `cluster status` copied its logs from the storage
        # 3. Node 2 dies; the head has room again.
        stop(holder)
        stop(node2)
        learner_pid = first["learner"]["pid"]
        try:
            os.kill(learner_pid, signal.SIGKILL)  # if it outlived its raylet
        except ProcessLookupError:
            pass
        saved = torch.load(stored / "checkpoints" / "latest.pt", weights_only=True)
        at = saved["counters"]["updates"]
        assert at > 0
        moved = poll("the learner restarted on the head", lambda: (
            (s := state()).get("learner") or {}).get("node") == head_node
            and s["learner"].get("updates") is not None and s, timeout=240)
        assert moved["learner"]["resumed_at"] == at  # from the stored checkpoint, not from 0
        assert moved["learner"]["updates"] >= at
        down = diswm("cluster", "down", "--run-dir", str(run), env=env)
        assert down.returncode == 0, down.stderr[-2000:]
        final = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
        assert final["counters"]["updates"] >= at  # the run folder holds the last checkpoint
        assert final["teacher"] is not None  # the teacher came through Redis to both nodes
        assert list((run / "openloop").glob("openloop_*.png"))  # images from the evaluator
    finally:
        for proc in reversed(procs):
            stop(proc)
        redis.stop()
        forget_cluster(address)
