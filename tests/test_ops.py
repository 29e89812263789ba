"""Operations hardening on a real redis-server: the failures an operator's bad day brings heal or
surface, and nothing an actor stepped is lost. Each test was written to fail on the code before
its fix (a crash, a lost chunk, an error that named nothing)."""

from __future__ import annotations

import os
import re
import signal
import stat
import time

import pytest
from prometheus_client import REGISTRY
from support import poll_until

from diswm.broadcast import BadWeights, WeightStore, decode_weights, encode_weights
from diswm.control import ControlValueError, RunControl
from diswm.presets import load_config
from replay_service.client import ReplaySpec, read_meta
from replay_service.server import RedisServer


def actor_metric(name: str, index: int) -> float:
    return REGISTRY.get_sample_value(name, {"actor": str(index)}) or 0.0


def make_worker(cfg, server, index: int):
    from actors.worker import ActorWorker

    spec = ReplaySpec.from_config(cfg, port=server.port, password=server.password)
    return ActorWorker(cfg, index, spec, sync_every=1), spec


# -- weights records ----------------------------------------------------------------------------
def test_weights_round_trip_and_every_bad_record_is_refused(tiny_cfg):
    from learner import Learner

    version, state = Learner(tiny_cfg, 6).get_weights("policy")
    record = encode_weights(7, state)
    got_version, got = decode_weights(record)
    assert got_version == 7 and set(got) == set(state)
    for key, value in state.items():
        assert torch_equal(got[key], value)
    flipped = bytearray(record)
    flipped[-5] ^= 0xFF
    nan_state = {**state, next(iter(state)): next(iter(state.values())) * float("nan")}
    for bad, why in [(record[:-9], "safetensors"), (bytes(flipped), "checksum"),
                     (b"\x00" * 3, "shorter"), (b"\xff" * 64, "truncated"),
                     (encode_weights(1, nan_state), "not finite")]:
        with pytest.raises(BadWeights, match=why):
            decode_weights(bad)


def torch_equal(a, b) -> bool:
    return bool((a == b.detach().float()).all())


def test_actor_refuses_a_bad_weights_record_and_keeps_acting(redis_server):
    """A weights record that fails its checks is refused, counted and logged by the actor,
    which keeps acting with its current weights (before: every actor crashed for good)."""
    from learner import Learner

    cfg = load_config(["tiny"], ["train.prefill=0"])
    worker, spec = make_worker(cfg, redis_server, index=41)
    store = WeightStore(redis_server.client(), spec.namespace)
    learner = Learner(cfg, worker.action_dim)
    store.publish(*learner.get_weights("policy"))
    worker.step()
    good = worker.policy.version
    assert good >= 0
    client = redis_server.client()
    key = f"diswm:{spec.namespace}:weights"
    _, state = learner.get_weights("policy")
    nan_state = {**state, next(iter(state)): next(iter(state.values())) * float("nan")}
    # Not through WeightStore.publish (it refuses NaN): as a foreign or older writer would.
    for record in (b"garbage" * 100, client.get(key)[:-100], encode_weights(good + 1, nan_state)):
        client.set(key, record)
        client.incr(f"diswm:{spec.namespace}:weights_version")
        for _ in range(3):
            worker.step()  # acting on: no exception
    # A state of the wrong shapes (another model size) is refused as a whole.
    other = Learner(load_config(["tiny"], ["model.units=8"]), worker.action_dim)
    store.publish(good + 5, other.get_weights("policy")[1])
    for _ in range(3):
        worker.step()
    assert worker.policy.version == good
    assert worker.weights_rejected == 4  # once per bad version, not once per poll
    assert actor_metric("diswm_actor_weights_rejected_total", 41) == 4
    store.publish(good + 6, learner.get_weights("policy")[1])  # a good record is taken again
    worker.step()
    assert worker.policy.version == good + 6
    worker.close()


# -- the rate limiter ---------------------------------------------------------------------------
def test_an_actor_whose_insert_times_out_keeps_its_steps(redis_server):
    """A learner that stops sampling stalls the actor on the limiter; the timeout neither crashes
    it nor drops the chunk (before: ReplayTimeout killed the loop, and its chunk was lost)."""
    cfg = load_config(["tiny"], ["replay.chunk_length=8", "replay.wait_timeout=0.2",
                                 "replay.tolerance=4", "train.prefill=8", "train.batch_size=2",
                                 "train.batch_length=4"])
    worker, spec = make_worker(cfg, redis_server, index=42)
    assert spec.samples_per_insert > 0
    for _ in range(60):
        worker.step()
    assert worker.insert_timeouts > 0
    assert actor_metric("diswm_actor_insert_timeouts_total", 42) == worker.insert_timeouts
    stepped = 1 + 60 + worker.episodes  # initial obs + steps + reset obs
    worker.close()
    assert read_meta(redis_server.client(), spec)["inserts"] == stepped


# -- the control plane --------------------------------------------------------------------------
def test_a_corrupt_control_value_is_named(redis_server):
    control = RunControl(redis_server.client(), "ns1")
    control.add(env_steps=5)
    control.set("env_steps", "banana")
    with pytest.raises(ControlValueError, match=r"diswm:ns1:control field 'env_steps' is 'banana'"):
        control.counters()
    with pytest.raises(ControlValueError, match=r"field 'env_steps'"):
        control.add(env_steps=1)
    control.report_error("actor-3", "ControlValueError: something\n  with two lines")
    (message,) = control.errors().values()
    assert re.fullmatch(r"\[since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\] "
                        r"ControlValueError: something with two lines", message), message


# -- one live run per namespace -----------------------------------------------------------------
def test_a_second_run_into_a_live_namespace_is_refused(redis_server, tmp_path):
    """Two runs publishing into one namespace mix weights and counters: the second is refused at
    start, naming the namespace and the live run; the same run folder (a restarted learner)
    takes its lease back, and a finished run frees it."""
    from diswm.control import NamespaceHeld, NamespaceLease
    from learner.service import LearnerService

    cfg = load_config(["tiny"], ["replay.namespace=shared", "train.compile=false"])
    spec = ReplaySpec.from_config(cfg, port=redis_server.port, password=redis_server.password)
    first = LearnerService(cfg, spec, tmp_path / "run-a", 6, progress=lambda m: None)
    with pytest.raises(NamespaceHeld, match=r"'shared' is in use by a live run \(.*run-a\)"):
        LearnerService(cfg, spec, tmp_path / "run-b", 6, progress=lambda m: None)
    again = LearnerService(cfg, spec, tmp_path / "run-a", 6, progress=lambda m: None)
    again.lease.release()
    LearnerService(cfg, spec, tmp_path / "run-b", 6, progress=lambda m: None).lease.release()
    # A lease that is not refreshed lapses by itself (a learner that died).
    lease = NamespaceLease(redis_server.client(), "n2", "run-x", ttl=0.2)
    lease.acquire()
    other = NamespaceLease(redis_server.client(), "n2", "run-y", ttl=0.2)
    with pytest.raises(NamespaceHeld):
        other.acquire()
    deadline = time.monotonic() + 5
    while lease.holder() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    other.acquire()
    assert other.holder() == "run-y"
    del first


# -- bounded restarts on a real local Ray ------------------------------------------------------
def test_a_corrupt_counter_stops_after_bounded_restarts_and_is_surfaced(tmp_path):
    """A control counter set to text made actor and learner crash and restart forever (dozens a
    minute, the learner rolling back each time) with the error only in Ray's logs. Now each role
    stops after `runtime.max_crash_restarts` crashes of that cause and the status names the key."""
    import uuid

    from diswm.supervision import CrashLedger
    from ops.runtime.cluster import Cluster, action_dim_of

    ns = f"crash-{uuid.uuid4().hex[:6]}"
    cfg = load_config(["tiny"], ["runtime.actors=1", "runtime.max_crash_restarts=2",
                                 "train.steps=1000000", "train.eval_every=1000000",
                                 f"replay.namespace={ns}"])
    cluster = Cluster.create(cfg, tmp_path / "run", num_cpus=4)
    try:
        run = tmp_path / "run"
        assert stat.S_IMODE(run.stat().st_mode) == 0o700  # a private run folder
        assert cluster.spec.password.encode() not in (run / "cluster.json").read_bytes()
        cluster.start_learner(action_dim_of(cfg))
        cluster.scale(1)
        client = cluster.redis_client()
        RunControl(client, ns).set("env_steps", "banana")
        ledgers = {role: CrashLedger(client, ns, role) for role in ("actor-0", "learner")}
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            errors = RunControl(client, ns).errors()
            if all("stopped after 2 crashes" in errors.get(role, "") for role in ledgers):
                break
            time.sleep(0.5)  # a poll with a deadline
        errors = RunControl(client, ns).errors()
        for role in ledgers:
            assert "stopped after 2 crashes" in errors.get(role, ""), errors
            assert f"diswm:{ns}:control field 'env_steps' is 'banana'" in errors[role]
        status = cluster.status()
        assert status["healthy"] is False
        assert any("'env_steps' is 'banana'" in p for p in status["problems"])
        assert status["learner"]["failed"] is True
        for role, ledger in ledgers.items():
            assert ledger.recent()[0] == 2, role  # no crash after the limit: the loop stopped
    finally:
        RunControl(cluster.redis_client(), ns).set("env_steps", "0")
        cluster.shutdown()


# -- bad files on the command line --------------------------------------------------------------
class _Boom:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def _bad_checkpoints(tmp_path):
    import pickle

    import torch

    good = tmp_path / "good.pt"
    torch.save({"format": "x", "wm": {"w": torch.zeros(3)}}, good)
    files = {"missing": tmp_path / "nope.pt", "garbage": tmp_path / "garbage.pt",
             "truncated": tmp_path / "truncated.pt", "crafted": tmp_path / "crafted.pt"}
    files["garbage"].write_bytes(b"not a checkpoint at all\n" * 10)
    files["truncated"].write_bytes(good.read_bytes()[:200])
    torch.save({"payload": _Boom()}, files["crafted"], pickle_module=pickle)
    return files


@pytest.mark.parametrize("command", ["inspect", "pretrain-inspect", "train-teacher"])
def test_bad_checkpoints_give_one_line_errors_without_unsafe_advice(tmp_path, capsys, command):
    from ops.cli import main

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    load_config(["tiny"]).save(run / "config.yaml")
    for kind, path in _bad_checkpoints(tmp_path).items():
        argv = {"inspect": ["inspect", str(run), "--checkpoint", str(path)],
                "pretrain-inspect": ["pretrain", "inspect", str(path), "--data", str(tmp_path),
                                     "--out", str(tmp_path / "out")],
                "train-teacher": ["train", "--serial", "--config", "tiny", "--teacher", str(path),
                                  "--run-dir", str(tmp_path / f"t-{kind}")]}[command]
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0, (command, kind)
        # Progress lines may come first; the failure is the last line, one line, no traceback.
        assert err and err[-1].startswith("diswm: error: "), (command, kind, err)
        assert sum(line.startswith("diswm: error") for line in err) == 1
        assert not any("Traceback" in line for line in err), (command, kind, err)
        assert str(path) in err[-1], (command, kind, err)
        assert "weights_only=False" not in err[-1] and "`False`" not in err[-1]


# -- Redis outages ------------------------------------------------------------------------------
def _replay_steps(n: int, start: int = 0):
    from test_replay import episodes

    return list(episodes(0, [n], start))


def test_supervised_redis_comes_back_after_a_kill_and_keeps_what_was_committed(tmp_path):
    """The cluster's local Redis is supervised: SIGKILL of redis-server (a crash, the OOM killer)
    restarts it with its own config and AOF; writers ride through, nothing committed is lost."""
    from replay_service.client import ReplayWriter

    with RedisServer(tmp_path / "redis", persistence="aof", fsync="always",
                     supervise=True) as server:
        spec = ReplaySpec(port=server.port, password=server.password, namespace="sup",
                          chunk_length=8, outage_window=30)
        writer = ReplayWriter(spec)
        steps = _replay_steps(80)
        for step in steps[:40]:
            writer.add("a", step)
        old_pid = server.server_pid()
        os.kill(old_pid, signal.SIGKILL)
        for step in steps[40:]:  # the client retries until the restarted server answers
            writer.add("a", step)
        writer.close()
        assert server.server_pid() != old_pid
        assert server.restarts == 1
        assert read_meta(server.client(), spec)["inserts"] == 80
    assert not server.running  # stop() ended the supervisor too


def test_clients_ride_out_an_outage_within_their_window(tmp_path):
    """Clients retry while Redis is down for up to `replay.outage_window` seconds (before: a
    fixed ~18 s, after which every role crashed together); past the window they fail, in
    bounded time."""
    import threading

    import redis as redis_lib

    from replay_service.client import ReplayWriter

    server = RedisServer(tmp_path / "redis", persistence="aof", fsync="always").start()
    try:
        patient = ReplayWriter(ReplaySpec(port=server.port, password=server.password,
                                          namespace="o", chunk_length=8, outage_window=30))
        impatient = ReplayWriter(ReplaySpec(port=server.port, password=server.password,
                                            namespace="o2", chunk_length=8, outage_window=1))
        steps = _replay_steps(32)
        for step in steps[:8]:
            patient.add("a", step)
        server.stop()
        start = time.monotonic()
        with pytest.raises(redis_lib.ConnectionError):
            for step in steps[:8]:
                impatient.add("b", step)
        assert time.monotonic() - start < 15
        restart = threading.Timer(3.0, server.start)  # Redis comes back after 3 s
        restart.start()
        for step in steps[8:]:
            patient.add("a", step)
        restart.join()
        patient.close()
        assert read_meta(server.client(), patient.spec)["inserts"] == 32
    finally:
        server.stop()


def test_commands_on_folders_that_are_not_runs_say_so_in_one_line(tmp_path, capsys):
    """`monitor` on a folder that is not a run created it and started Prometheus; `report` on
    a folder given but holding no run said "no run folders given"; the cluster commands without
    a cluster state printed a FileNotFoundError traceback and exited 0."""
    from ops.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        "monitor": (["monitor", "--run-dir", str(tmp_path / "notarun")], "not a run folder"),
        "report": (["report", str(empty), "--out", str(tmp_path / "rep")], "is not a run"),
        "report-missing": (["report", str(tmp_path / "gone"), "--out", str(tmp_path / "rep")],
                           "no such run folder"),
        "status": (["cluster", "status", "--run-dir", str(empty)], "no cluster state"),
        "scale": (["cluster", "scale", "3", "--run-dir", str(empty)], "no cluster state"),
        "down": (["cluster", "down", "--run-dir", str(empty)], "no cluster state"),
    }
    for name, (argv, message) in cases.items():
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0, name
        assert len(err) == 1 and err[0].startswith("diswm: error: ") and message in err[0], \
            (name, err)
    assert not (tmp_path / "notarun").exists()  # monitor created nothing


def _listening(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def test_a_failed_cluster_up_leaves_nothing_running(tmp_path):
    """A `cluster up` whose learner cannot start left Redis and the Ray head running (and a
    state file); now it stops what it started and says why in one line."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint\n")
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "ops", "cluster", "up", "--config", "tiny", "--actors", "1",
         "--teacher", str(bad), "--run-dir", str(run)],
        capture_output=True, text=True, timeout=400, cwd=root)
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, proc.stderr[-2000:]
    # The driver reads the teacher to hand it to the learner through Redis: it names the file.
    assert err[-1].startswith(f"diswm: error: teacher checkpoint {bad} cannot be loaded"), err[-3:]
    assert "weights_only" not in err[-1]
    assert not (run / "cluster.json").exists()
    redis_port = int(re.search(r"^port (\d+)$", (run / "redis" / "redis.conf").read_text(),
                               re.M).group(1))
    head = re.search(r"--address='?([\d.]+):(\d+)", (run / "ray-head.log").read_text())
    assert head, "the Ray head had started (its log has its address)"
    assert not _listening("127.0.0.1", redis_port), "redis-server still running"
    assert not _listening(head.group(1), int(head.group(2))), "Ray head still running"


# -- signals: `diswm run` stopped by SIGTERM (systemd, timeout, a scheduler) or killed ----------
def _processes_naming(text: str) -> dict[int, str]:
    """Live processes whose command line mentions `text` (redis-server and its supervisor carry
    the run folder in theirs)."""
    from pathlib import Path

    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found[int(entry.name)] = cmdline
    return found


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_run(run, *extra: str):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops", "run", "--config", "tiny", "--skip-pretrain",
         "--run-dir", str(run), "--set", "train.steps=100000", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root, env=env,
        start_new_session=True)
    ready = poll_until(lambda: (run / "cluster.json").exists() or proc.poll() is not None, 240)
    assert ready and proc.poll() is None, "diswm run did not come up"
    return proc


def _leftovers(run, proc, redis_pid: int) -> dict[int, str]:
    """What is still running of `run`: its supervisor and redis-server (which renames itself,
    so it is found by pid); kills them and the run's process group, so that a failing test
    leaves nothing behind."""
    left = _processes_naming(str(run))
    if _alive(redis_pid):
        left[redis_pid] = "redis-server"
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return left


def _terminate(proc, timeout: float, what: str) -> str:
    """SIGTERM to `proc`; its stderr, once it has stopped the way every `diswm` command must:
    exit 143, the last line `diswm: terminated (SIGTERM)`, no traceback."""
    import subprocess

    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} did not stop within {timeout:.0f} s of SIGTERM")
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 143, (proc.returncode, err[-3000:])
    assert lines[-1] == "diswm: terminated (SIGTERM)", lines[-5:]
    assert "Traceback" not in err, err[-3000:]
    return err


@pytest.mark.parametrize("when", ["cluster up", "roles up"])
def test_sigterm_stops_a_run_in_one_line_and_leaves_nothing_running(tmp_path, when):
    """SIGTERM to `diswm run` (systemd, `timeout`, a batch scheduler) aborted it (exit -6, no
    message: Ray's handler calls sys.exit inside the driver) and left its redis-server and the
    supervisor running. Now it stops like Ctrl-C: actors and learner stop, Redis shuts down,
    one `diswm:` line, exit 143."""
    run = tmp_path / "run"
    proc = _start_run(run)
    redis_pid = int((run / "redis" / "redis.pid").read_text())
    try:
        if when == "roles up":  # the learner writes its CSV once it trains
            assert poll_until(lambda: (run / "train.csv").exists() or proc.poll() is not None,
                               300), "the learner did not start"
        _terminate(proc, 150, "diswm run")
        assert poll_until(lambda: not _processes_naming(str(run)) and not _alive(redis_pid), 30)
    finally:
        left = _leftovers(run, proc, redis_pid)
    assert not left, f"still running after SIGTERM: {left}"


def test_a_killed_run_takes_its_redis_down(tmp_path):
    """`diswm run` killed outright (SIGKILL, the OOM killer) left its supervised redis-server
    running for good (password-protected, but holding a port and memory). The supervisor of a
    run's own Redis now follows its parent: it stops redis-server (which persists per its
    config) once the process that started it is gone."""
    run = tmp_path / "run"
    proc = _start_run(run)
    redis_pid = int((run / "redis" / "redis.pid").read_text())
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        gone = poll_until(lambda: not _processes_naming(str(run)) and not _alive(redis_pid), 30)
        log = run / "redis" / "supervisor.log"
        said = log.read_text() if log.exists() else ""
    finally:
        left = _leftovers(run, proc, redis_pid)
    assert gone, f"still running 30 s after the run was killed: {left}"
    assert "parent process" in said and "is gone" in said, said


def test_a_sigterm_inside_a_ctypes_callback_is_not_lost_or_printed():
    """A SIGTERM that lands while MuJoCo calls back into Python (its warning hook) raised the
    interrupt where Python cannot propagate it: it printed "Exception ignored ... Traceback"
    and was lost. Now it prints nothing there, and `signals.check()` raises it afterwards."""
    import subprocess
    import sys
    from pathlib import Path

    code = """
import ctypes, os, signal, sys
from diswm import signals
signals.stop_on_sigterm()
@ctypes.CFUNCTYPE(None)
def callback():
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):  # the handler runs at a bytecode boundary in here
        pass
callback()
print("carried on", flush=True)
try:
    signals.check()
except KeyboardInterrupt:
    sys.exit(143)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout == "carried on\n"
    assert proc.returncode == 143, proc.stderr
    assert proc.stderr == ""


# -- alerting rules: the run speaks up in Prometheus -----------------------------------------
def test_alert_rules_fire_on_their_failures_and_not_on_a_healthy_run(tmp_path):
    """deploy/alerts.yml against synthetic series (tests/prometheus/alerts_test.yml): every
    alert fires on the failure it names, with its labels and text, at the time its `for`
    allows, and not on the healthy runs' series; the config `make monitor` writes loads them."""
    import shutil
    import subprocess
    from pathlib import Path

    from ops.runtime.monitor import prometheus_config

    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: `make prometheus` installs Debian's prometheus"
    here = Path(__file__).resolve().parent / "prometheus"
    unit = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=here,
                          capture_output=True, text=True, timeout=120)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr
    config = prometheus_config(tmp_path)
    check = subprocess.run([promtool, "check", "config", str(config)], capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "9 rules found" in check.stdout, check.stdout


def test_sigterm_stops_parallel_experiment_runs_each_with_its_final_checkpoint(tmp_path):
    """`diswm experiment --parallel 2` runs its runs in threads. On SIGTERM the main thread shut
    Ray down under them: the learners died without their final checkpoint and the threads
    printed failures and retries. Now each run stops as a single run does (its learner
    checkpoints), then the experiment exits 143 with one line and its Redis stops."""
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "exp"
    runs = [out / "runs" / f"dreamerv2-seed{k}" for k in (0, 1)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops", "experiment", "finger_spin_to_cartpole_swingup",
         "--methods", "dreamerv2", "--seeds", "2", "--parallel", "2", "--config", "tiny",
         "--out", str(out), "--set", "train.steps=100000", "train.checkpoint_every=10000000",
         "runtime.actors=1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[1], env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True)
    redis_pid = 0
    try:
        both = poll_until(lambda: all((r / "train.csv").exists() for r in runs)
                           or proc.poll() is not None, 400)
        assert both and proc.poll() is None, "the two runs did not start training"
        redis_pid = int((out / "redis" / "redis.pid").read_text())
        assert not any((r / "checkpoints" / "latest.pt").exists() for r in runs)
        err = _terminate(proc, 200, "diswm experiment")
        assert "retrying" not in err, err[-3000:]
        for run in runs:  # written at the stop: periodic checkpoints are off
            assert (run / "checkpoints" / "latest.pt").exists(), (run, err[-4000:])
        assert poll_until(lambda: not _alive(redis_pid), 30)
    finally:
        left = _leftovers(out, proc, redis_pid)  # redis_pid 0 (never read): no such process
    assert not left, f"still running after SIGTERM: {left}"


def test_sigterm_stops_a_serial_run_with_a_checkpoint_to_resume_from(tmp_path):
    """`diswm train --serial` stopped by SIGTERM died at once (Python's default) and a run
    between checkpoints lost everything since the last one. Now it writes its checkpoint on
    the way out, exits 143 with one line, and `--resume` continues from it."""
    import subprocess
    import sys
    from pathlib import Path

    from diswm.checkpoints import load_checkpoint

    run = tmp_path / "serial"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops", "train", "--serial", "--config", "tiny", "dreamerv2",
         "--run-dir", str(run), "--set", "train.steps=100000", "train.checkpoint_every=10000000",
         "train.eval_every=10000000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    try:
        started = poll_until(lambda: (run / "train.csv").exists() or proc.poll() is not None,
                              240)
        assert started and proc.poll() is None, "the serial run did not start training"
        assert not (run / "checkpoints" / "latest.pt").exists()
        _terminate(proc, 120, "diswm train --serial")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    saved = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert saved["extra"]["counters"]["env_steps"] > 0


def test_training_episodes_round_trip_through_the_control_plane(redis_server):
    control = RunControl(redis_server.client(), "episodes-test")
    for k in range(3):
        control.record_episode(env_steps=1000 * (k + 1), actor=k, env=0, length=1000,
                               policy_version=10 * k, scheme="A", **{"return": 1.5 * k})
    every = control.episodes()
    assert [int(f["env_steps"]) for _, f in every] == [1000, 2000, 3000]
    assert [float(f["return"]) for _, f in every] == [0.0, 1.5, 3.0]
    # A learner that resumes from the last id it wrote gets only what came after it.
    assert [f["actor"] for _, f in control.episodes(after=every[1][0])] == ["2"]
    assert control.episodes(after=every[-1][0]) == []
