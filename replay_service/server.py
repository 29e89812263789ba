"""A local `redis-server` for the replay: loopback, password, persistence, bounded memory.

    server = RedisServer(run_dir / "redis", persistence="aof").start()
    ...  # server.port, server.password
    server.stop()

The password comes from the caller or is generated into ``<dir>/redis.password`` (mode 0600);
the config file holding it is mode 0600 too, so it never shows on a command line.
`maxmemory` with `noeviction` is a safety net: the replay's own FIFO keeps the contents within
its capacity, and Redis refuses writes rather than silently dropping data if that ever fails.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

_REPO_ROOT = str(Path(__file__).resolve().parents[1])  # `python -m replay_service.supervisor`


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def read_or_create_password(path: Path) -> str:
    """The password stored at `path`, or a new random one written there (mode 0600)."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password


class RedisServer:
    def __init__(self, directory: str | Path, *, host: str = "127.0.0.1", port: int = 0,
                 password: str = "", persistence: str = "aof", fsync: str = "everysec",
                 maxmemory_bytes: int = 0, executable: str = "redis-server",
                 supervise: bool = False, cluster: bool = False, follow_parent: bool = False):
        """`supervise` runs redis-server under replay_service/supervisor.py, which restarts it
        with the same config (port, password, AOF) whenever it dies abnormally; with
        `follow_parent` the supervisor also stops it once this process is gone (a run's own
        Redis; not a `cluster up`, which outlives its command). `cluster` starts
        it as a Redis Cluster node (replay_service/redis_cluster.py forms the cluster): its bus on its
        own free port, its cluster state in ``<dir>/nodes.conf``, serving its slots while
        another node is down."""
        if persistence not in ("aof", "snapshot", "none"):
            raise ValueError(f"persistence {persistence!r}: choose aof, snapshot or none")
        self.dir = Path(directory).resolve()
        self.host = host
        self.port = port
        self.password = password or read_or_create_password(self.dir / "redis.password")
        self.persistence = persistence
        self.fsync = fsync
        self.maxmemory = maxmemory_bytes
        self.executable = shutil.which(executable)
        if self.executable is None:
            raise FileNotFoundError(
                "redis-server not found; `make install` installs Debian's redis-server")
        self.supervise = supervise
        self.follow_parent = follow_parent
        self.cluster = cluster
        self.cluster_port = 0  # the cluster bus port, picked once (a restart keeps it)
        self._proc: subprocess.Popen | None = None  # redis-server, or its supervisor

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    def client(self) -> redis.Redis:
        """An administrative client that does not retry (shutdown and polling must not wait)."""
        return redis.Redis(host=self.host, port=self.port, password=self.password,
                           retry=Retry(NoBackoff(), 0))

    def _write_conf(self) -> Path:
        lines = [
            f"bind {self.host}", f"port {self.port}", "protected-mode yes",
            f"dir {self.dir}", "daemonize no", f"logfile {self.dir / 'redis.log'}",
            f"requirepass {self.password}",
            "maxmemory-policy noeviction",
            f"maxmemory {self.maxmemory}",
            "dbfilename dump.rdb",
        ]
        if self.cluster:
            lines += ["cluster-enabled yes", f"cluster-port {self.cluster_port}",
                      f"cluster-config-file {self.dir / 'nodes.conf'}",
                      "cluster-node-timeout 5000",
                      # A dead node's slots are unavailable; the others keep serving theirs.
                      "cluster-require-full-coverage no",
                      f"masterauth {self.password}"]  # replicas authenticate to their master
        if self.persistence == "aof":
            lines += ["appendonly yes", f"appendfsync {self.fsync}", 'save ""']
        elif self.persistence == "snapshot":
            lines += ["appendonly no", 'save ""']  # snapshots are taken at checkpoints
        else:
            lines += ["appendonly no", 'save ""']
        conf = self.dir / "redis.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        return conf

    def start(self, timeout: float = 20.0) -> RedisServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        if self.cluster and not self.cluster_port:
            while self.cluster_port in (0, self.port):
                self.cluster_port = free_port(self.host)
        conf = self._write_conf()
        # Output to a file, not a pipe: the server may outlive this process (`cluster up`).
        with (self.dir / "redis.stderr").open("wb") as err_file:
            cmd = [self.executable, str(conf)]
            if self.supervise:
                cmd = [sys.executable, "-m", "replay_service.supervisor", str(conf),
                       "--dir", str(self.dir), "--executable", self.executable]
                if self.follow_parent:
                    cmd += ["--parent", str(os.getpid())]
                # How to start it again, for the keeper (replay_service/keeper.py).
                (self.dir / "supervisor.cmd").write_text(json.dumps(
                    {"cmd": cmd, "cwd": str(_REPO_ROOT)}))
            self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err_file,
                                          start_new_session=True, cwd=_REPO_ROOT)
        deadline = time.monotonic() + timeout
        client = self.client()
        while True:
            if self._proc.poll() is not None:
                err = (self.dir / "redis.stderr").read_text(errors="replace")
                log = self.dir / "redis.log"
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}: "
                                   f"{err.strip()} {tail.strip()}")
            try:
                if client.ping():
                    # Loading an AOF/RDB can take a moment after the port opens.
                    if int(client.info("persistence").get("loading", 0)) == 0:
                        return self
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"redis-server did not answer on {self.url} "
                                   f"within {timeout:.0f}s")
            time.sleep(0.02)  # polling the port with a deadline

    def snapshot(self) -> None:
        """A synchronous RDB snapshot (the `snapshot` persistence mode calls it at checkpoints)."""
        self.client().save()

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful shutdown: persists per the mode (AOF fsync or a final snapshot)."""
        if self._proc is None or self._proc.poll() is not None:
            return
        try:
            self.client().shutdown(save=self.persistence == "snapshot",
                                   nosave=self.persistence == "none")
        except redis.ConnectionError:
            pass  # the server closes the connection as it exits
        except redis.ResponseError:
            self._proc.terminate()
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL to everything this started (redis-server and any supervisor), as a crash of
        the whole machine would (tests use it)."""
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait()

    def server_pid(self) -> int:
        """redis-server's own process id (under a supervisor, not the supervisor's)."""
        return int(self.client().info("server")["process_id"])

    @property
    def restarts(self) -> int:
        """Times the supervisor restarted redis-server."""
        path = self.dir / "supervisor.restarts"
        return int(path.read_text()) if path.exists() else 0

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> RedisServer:
        return self.start() if not self.running else self

    def __exit__(self, *exc) -> None:
        self.stop()
