"""Keep a local redis-server up: restart it with its own config when it dies.

    python -m replay_service.supervisor DIR/redis.conf --dir DIR

`RedisServer(..., supervise=True)` (the cluster's local Redis) runs redis-server under this small
process. When redis-server dies abnormally (killed, crashed, out of memory: a non-zero exit) it is
started again with the same config file, so the same port, password and AOF, after a backoff that
doubles from 0.5 s to 5 s and resets once it has run for a minute; each restart is logged to
``DIR/supervisor.log`` and counted in ``DIR/supervisor.restarts``. A clean exit (Redis's
SHUTDOWN, which `RedisServer.stop` and `cluster down` send) ends the supervisor too; SIGTERM to
the supervisor is passed on to redis-server (which then persists per its config) and ends both.
Each of those ends writes ``DIR/supervisor.exit``; a supervisor killed outright (SIGKILL, with
its Redis or not) leaves none, and the cluster's keeper (replay_service/keeper.py) starts it
again from ``DIR/supervisor.cmd``.

With ``--parent PID`` (a run's own Redis, which must not outlive the run) the supervisor follows
the process that started it: once that process is gone, killed outright or crashed before it
could stop Redis, the supervisor stops redis-server as SIGTERM would, and logs why. A cluster
started by `diswm cluster up` outlives the command, so it is started without it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def _log(directory: Path, message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with (directory / "supervisor.log").open("a") as f:
        f.write(f"{stamp} {message}\n")


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _follow(parent: int, directory: Path, every: float = 1.0) -> None:
    """SIGTERM to this process once `parent` (the run that started Redis) is gone, which stops
    redis-server through the handler below. Its liveness, not this process's parent: a
    supervisor the keeper restarted (replay_service/keeper.py) follows the same run."""
    while alive(parent):
        time.sleep(every)  # polling: Linux gives no portable event for a process's death
    _log(directory, f"parent process {parent} is gone; stopping redis-server")
    os.kill(os.getpid(), signal.SIGTERM)


def supervise(executable: str, conf: Path, directory: Path, parent: int = 0) -> int:
    """Run and restart redis-server; every way out records why in ``supervisor.exit`` (a
    supervisor that is gone without it was killed: the keeper starts it again)."""
    # The pid first: a keeper that looks in between sees a live supervisor (or the old stop),
    # never a dead pid without a stop, which would start a second one.
    (directory / "supervisor.pid").write_text(f"{os.getpid()}\n")
    (directory / "supervisor.exit").unlink(missing_ok=True)
    code = _supervise(executable, conf, directory, parent)
    (directory / "supervisor.exit").write_text(f"{code}\n")
    return code


def _supervise(executable: str, conf: Path, directory: Path, parent: int) -> int:
    stopping = False
    child: subprocess.Popen | None = None

    def on_term(signum, frame):  # noqa: ARG001 - signal handler signature
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.terminate()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    if parent:
        threading.Thread(target=_follow, args=(parent, directory), daemon=True).start()
    restarts, delay = 0, 0.5
    while True:
        with (directory / "redis.stderr").open("ab") as err:
            child = subprocess.Popen([executable, str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=err)
        (directory / "redis.pid").write_text(f"{child.pid}\n")
        started = time.monotonic()
        code = child.wait()
        if stopping or code == 0:
            _log(directory, f"redis-server exited with {code}; supervisor stops")
            return 0
        if restarts == 0 and code > 0 and time.monotonic() - started < 2.0:
            _log(directory, f"redis-server failed to start (exit {code}); see redis.log")
            return code  # a config that cannot start is not retried (the caller reports it)
        if time.monotonic() - started > 60:
            delay = 0.5
        restarts += 1
        (directory / "supervisor.restarts").write_text(f"{restarts}\n")
        _log(directory, f"redis-server died (exit {code}); restart {restarts} in {delay:.1f} s "
                        f"with {conf}")
        deadline = time.monotonic() + delay
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.05)
        if stopping:
            return 0
        delay = min(delay * 2, 5.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("conf", type=Path)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--executable", default="redis-server")
    parser.add_argument("--parent", type=int, default=0,
                        help="stop redis-server once this process (the starter) is gone")
    args = parser.parse_args(argv)
    return supervise(args.executable, args.conf, args.dir, args.parent)


if __name__ == "__main__":
    sys.exit(main())
