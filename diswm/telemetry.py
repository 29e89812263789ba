"""Serving this process's Prometheus metrics, and telling Prometheus where every process is.

Each role process serves `/metrics` on a free loopback port and registers ``host:port`` in the
run's Redis hash ``diswm:NS:metrics``; `write_file_sd` turns that registry into a Prometheus
file-based service discovery file, which Prometheus re-reads by itself when it changes (so
restarted actors on new ports are found again).
"""

from __future__ import annotations

import json
from pathlib import Path

import redis
from prometheus_client import start_http_server

from diswm.atomic import atomic_write


def serve_metrics(host: str = "127.0.0.1", port: int = 0) -> int:
    """Start the metrics HTTP server in a daemon thread; returns the bound port."""
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)


def advertised(host: str, port: int) -> str:
    """The address Prometheus should scrape: a wildcard bind advertises this node's IP."""
    if host in ("0.0.0.0", "::", ""):
        try:
            import ray

            host = ray.util.get_node_ip_address()
        except Exception:  # noqa: BLE001 - outside Ray: the machine's name
            import socket

            host = socket.gethostbyname(socket.gethostname())
    return f"{host}:{port}"


def register(client: redis.Redis, namespace: str, name: str, address: str) -> None:
    client.hset(f"diswm:{namespace}:metrics", name, address)


def unregister(client: redis.Redis, namespace: str, name: str) -> None:
    client.hdel(f"diswm:{namespace}:metrics", name)


def targets(client: redis.Redis, namespace: str) -> dict[str, str]:
    return {k.decode(): v.decode()
            for k, v in client.hgetall(f"diswm:{namespace}:metrics").items()}


def write_file_sd(path: str | Path, registered: dict[str, str], namespace: str) -> Path:
    """Prometheus file_sd JSON: one target group per process, labelled role and instance name."""
    groups = []
    for name, address in sorted(registered.items()):
        role = "learner" if name == "learner" else "actor" if name.startswith("actor") else name
        labels = {"role": role, "process": name, "run": namespace}
        if role == "actor":
            labels["actor"] = name.split("-", 1)[-1]
        groups.append({"targets": [address], "labels": labels})
    # Prometheus must never read a half-written file
    return atomic_write(path, json.dumps(groups, indent=2) + "\n")
