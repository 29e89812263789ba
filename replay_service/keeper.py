"""Who watches the watcher: start Redis's supervisor again when it is gone without a stop.

    keeper = RedisKeeper(run_dir / "redis")
    keeper.check()      # "running", "stopped" (a deliberate stop: left alone) or "restarted"

A local Redis runs under replay_service/supervisor.py, which restarts redis-server when it dies.
If the supervisor dies too (SIGKILL of both, the OOM killer taking the process group), nothing
restarted either. The keeper looks at what the supervisor leaves in its folder:
``supervisor.pid`` (the process), ``supervisor.exit`` (written on every deliberate end: Redis's
SHUTDOWN, SIGTERM, a config that cannot start) and ``supervisor.cmd`` (how it was started). A
supervisor that is not running and left no ``supervisor.exit`` was killed: the keeper starts it
again with the same command, so the same config, port, password and AOF. The cluster runs the
keeper in a Ray actor that Ray itself restarts (ops/runtime/redis_keeper.py).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from replay_service.supervisor import alive


def _log(directory: Path, message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with (directory / "supervisor.log").open("a") as f:
        f.write(f"{stamp} {message}\n")


class RedisKeeper:
    """One supervised Redis's folder; `check` restarts its supervisor when it was killed."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.restarts = 0
        self._children: list[subprocess.Popen] = []
        self._next_try = 0.0
        self._delay = 1.0

    def verdict(self) -> str:
        """"running", "stopped" (it ended deliberately) or "killed"."""
        if (self.dir / "supervisor.exit").exists():
            return "stopped"  # it decided to end (it may still be exiting)
        try:
            pid = int((self.dir / "supervisor.pid").read_text())
        except (OSError, ValueError):
            return "stopped"  # never started under a supervisor here
        return "running" if alive(pid) else "killed"

    def check(self) -> str:
        """Look once; start the supervisor again if it was killed. Returns "running",
        "stopped", "restarted" or "waiting" (a restart is backing off)."""
        self._children = [c for c in self._children if c.poll() is None]  # reap
        verdict = self.verdict()
        if verdict != "killed":
            if verdict == "running":
                self._delay = 1.0
            return verdict
        if time.monotonic() < self._next_try:
            return "waiting"
        self.restart()
        # A supervisor that dies again at once is retried 1, 2, 4 ... 30 s apart.
        self._next_try = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, 30.0)
        return "restarted"

    def restart(self) -> None:
        spec = json.loads((self.dir / "supervisor.cmd").read_text())
        self.restarts += 1
        (self.dir / "keeper.restarts").write_text(f"{self.restarts}\n")
        _log(self.dir, "keeper: the supervisor and redis-server are gone without a stop; "
                       f"starting the supervisor again (keeper restart {self.restarts})")
        with (self.dir / "redis.stderr").open("ab") as err:
            child = subprocess.Popen(spec["cmd"], stdout=subprocess.DEVNULL, stderr=err,
                                     cwd=spec.get("cwd"), start_new_session=True)
        self._children.append(child)
        # The new supervisor writes the same; written here too, so that the next look never
        # sees the old, dead pid and starts a second one.
        (self.dir / "supervisor.pid").write_text(f"{child.pid}\n")
