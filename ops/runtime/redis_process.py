"""The Redis side of a run: its password, its memory limit, and stopping its process.

The password comes from ``$DISWM_REDIS_PASSWORD``, else ``replay.password_file``; with neither, a
local Redis generates one into the run folder (replay_service/server.py), which later commands
of the same run read back (`stored_password`).
"""

from __future__ import annotations

import os
from pathlib import Path

from diswm.atomic import atomic_write
from diswm.config import Config
from replay_service.redis_cluster import LocalRedisCluster
from replay_service.spec import ReplaySpec


def redis_maxmemory(cfg: Config) -> int:
    """Redis's hard memory cap: the replay's capacity as raw (uncompressed) steps, plus room."""
    step = cfg.env.size * cfg.env.size * 3 + 4096
    return int(cfg.replay.capacity * step * 1.2) + (256 << 20)


def redis_password(cfg: Config) -> str:
    """The Redis password from $DISWM_REDIS_PASSWORD, else `replay.password_file`; "" when
    neither is set (a local Redis then generates one into the run folder)."""
    env = os.environ.get("DISWM_REDIS_PASSWORD", "").strip()
    if env:
        return env
    if cfg.replay.password_file:
        path = Path(cfg.replay.password_file).expanduser()
        try:
            text = path.read_text().strip()
        except OSError as err:
            raise ValueError(f"replay.password_file {path}: cannot read it "
                             f"({err.strerror or err})") from None
        if not text:
            raise ValueError(f"replay.password_file {path} is empty")
        return text
    return ""


def password_record(cfg: Config, run_dir: Path, password: str) -> Path:
    """The file that holds a run's Redis password, recorded (as a path, never the secret) in
    its state file so that every later command on the run folder finds it from any shell and
    any directory: `replay.password_file` as an absolute path; a password from
    $DISWM_REDIS_PASSWORD copied into the run's private folder (``redis.password``, mode 0600,
    where a generated one lives too); a generated one where it was generated."""
    if os.environ.get("DISWM_REDIS_PASSWORD", "").strip():
        return atomic_write(run_dir / "redis.password", password + "\n")  # mode 0600
    if cfg.replay.password_file:
        return Path(cfg.replay.password_file).expanduser().resolve()
    for path in (run_dir / "redis" / "redis.password", run_dir / "redis.password"):
        if path.exists() and path.read_text().strip() == password:
            return path
    raise ValueError(f"the Redis password of {run_dir} is in no file")


def stored_password(cfg: Config, run_dir: Path, recorded: str | None = None) -> str:
    """The password of a run's Redis: $DISWM_REDIS_PASSWORD when set, else the file its state
    recorded (`password_record`), else where the run's config says it took it from."""
    env = os.environ.get("DISWM_REDIS_PASSWORD", "").strip()
    if env:
        return env
    if recorded:
        path = Path(recorded)
        try:
            text = path.read_text().strip()
        except OSError as err:
            raise ValueError(f"the Redis password of {run_dir} is kept in {path}, which cannot "
                             f"be read ({err.strerror or err})") from None
        if text:
            return text
        raise ValueError(f"the Redis password file {path} of {run_dir} is empty")
    password = redis_password(cfg)
    if password:
        return password
    for path in (run_dir / "redis" / "redis.password", run_dir / "redis.password"):
        if path.exists():
            return path.read_text().strip()
    raise ValueError(f"no Redis password for {run_dir}: set DISWM_REDIS_PASSWORD or "
                     "replay.password_file as when the cluster was started")


def redis_pid(server) -> int | None:
    """The process id of the local Redis (a cluster's first node) `cluster down` stops."""
    if server is None:
        return None
    first = server.nodes[0] if isinstance(server, LocalRedisCluster) else server
    return first._proc.pid if first._proc else None


def shutdown_redis(spec: ReplaySpec) -> None:
    import redis

    addresses = [f"{spec.host}:{spec.port}", *spec.cluster_nodes]  # every node of a cluster
    for address in addresses:
        host, _, port = address.rpartition(":")
        client = redis.Redis(host=host, port=int(port), password=spec.password)
        try:
            client.shutdown()
        except redis.ConnectionError:
            pass
