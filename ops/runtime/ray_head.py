"""The Ray side of a run: a `ray start --head` of its own, its token, and what a run asks of it.

    address, pgid = start_ray_head(run_dir, ray_cpus(cfg))   # its own process group and token
    ...
    stop_ray_head(pgid, address)                             # that Ray only, not the machine's

`run_bundles` is a run's placement group (learner, evaluation actor, one bundle per actor).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from diswm.config import Config


def run_bundles(cfg: Config, gpus: bool) -> list[dict[str, float]]:
    """What one run needs, as placement-group bundles: the learner (its CPUs and GPU share), its
    evaluation actor, and one bundle per actor (with `runtime.actor_resources`)."""
    learner = {"CPU": float(cfg.runtime.learner_cpus)}
    if gpus and cfg.runtime.learner_gpus:
        learner["GPU"] = float(cfg.runtime.learner_gpus)
    actor = {"CPU": 1.0, **cfg.runtime.actor_resource_map()}
    return [learner, {"CPU": 1.0}, *[dict(actor) for _ in range(cfg.runtime.actors)]]


def ray_cpus(cfg: Config) -> int:
    """Logical CPUs for Ray's scheduler: one per actor, the learner's, one for its evaluation
    actor and one to scale up into; at least the machine's (actors mostly wait on rendering or
    the rate limiter, so this oversubscribes on purpose). `cluster up --ray-cpus N` sets more."""
    return max(os.cpu_count() or 1, cfg.runtime.actors + cfg.runtime.learner_cpus + 2)


def ray_cli() -> str:
    """The `ray` command of this interpreter's environment (the venv need not be on PATH)."""
    import shutil
    import sys

    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.exists() else shutil.which("ray")
    if not found:
        raise FileNotFoundError("the `ray` command is missing; `make install` installs ray")
    return found


def ray_env() -> dict[str, str]:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


def use_ray_token(run_dir: Path, create: bool = False) -> Path:
    """Ray's token authentication (on by default for `ray start` since Ray 2.59) with the run's
    own token: ``<run_dir>/ray.token`` (mode 0600), for this process and what it starts. Ray
    reads the token when it is first imported, so call this before."""
    import secrets

    path = Path(run_dir) / "ray.token"
    if create and not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    if path.exists():
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(path.resolve())
    return path


def start_ray_head(run_dir: Path, num_cpus: int, timeout: float = 180.0) -> tuple[str, int]:
    """`ray start --head --block` in its own process group; returns (the address Ray
    advertises, the group's id). Stopping that group stops this cluster's Ray and nothing else
    (`ray stop` would end every Ray on the machine)."""
    import signal

    from replay_service.server import free_port

    use_ray_token(run_dir, create=True)
    port = free_port()
    cmd = [ray_cli(), "start", "--head", f"--port={port}", f"--num-cpus={num_cpus}",
           "--include-dashboard=false", "--disable-usage-stats", "--block"]
    log_path = run_dir / "ray-head.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ray_env(),
                                start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        text = log_path.read_text(errors="replace")
        for line in text.splitlines():  # Ray advertises the node's own IP
            if "ray start --address=" in line:
                return line.split("--address=", 1)[1].strip().strip("'\"").split("'")[0], proc.pid
        if proc.poll() is not None:
            raise RuntimeError(f"`{' '.join(cmd)}` exited with {proc.returncode}:\n{text}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise TimeoutError(f"the Ray head did not come up in {timeout:.0f}s; see {log_path}")
        time.sleep(0.2)  # polling the head's log for its address, with a deadline


def stop_ray_head(pgid: int, address: str = "", timeout: float = 60.0) -> None:
    """Stop the process group `start_ray_head` made (SIGTERM, then SIGKILL), and forget its
    address where Ray records the machine's current cluster (as `ray stop` would)."""
    import signal
    import tempfile

    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        if address and current.read_text().strip() == address:
            current.unlink()
    except OSError:
        pass

    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)  # waiting for the group to exit, with a deadline
    os.killpg(pgid, signal.SIGKILL)


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))
