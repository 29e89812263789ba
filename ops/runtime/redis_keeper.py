"""The keeper of a cluster's local Redis as a Ray actor: Ray restarts it, it restarts Redis's
supervisor (replay_service/keeper.py), the supervisor restarts redis-server.

    start_keeper(namespace, [run_dir / "redis"], detached=True)   # Cluster.create does this
    ray.get(ray.get_actor("redis-keeper", namespace=ns).check_now.remote())  # ["running"]

It looks once a second, takes no CPU from the run's actors (num_cpus=0) and runs on the node
that started Redis (it starts a local process there).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from replay_service.keeper import RedisKeeper

NAME = "redis-keeper"


class KeeperActor:
    def __init__(self, directories: list[str], every: float = 1.0):
        self.keepers = [RedisKeeper(d) for d in directories]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.every = every
        self._thread = threading.Thread(target=self._watch, name="redis-keeper", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.every):  # a watch, not a synchronisation
            self.check_now()

    def check_now(self) -> list[str]:
        """Look at every Redis now: "running", "stopped", "restarted" or "waiting" each."""
        with self._lock:
            return [k.check() for k in self.keepers]

    def stats(self) -> dict[str, Any]:
        return {"restarts": [k.restarts for k in self.keepers],
                "redis": [str(k.dir) for k in self.keepers]}


def start_keeper(namespace: str, directories: list[Path], *, detached: bool):
    """The run's keeper actor, on this node; returns its handle."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    opts: dict[str, Any] = {
        "name": NAME, "namespace": namespace, "num_cpus": 0, "max_restarts": -1,
        "max_task_retries": -1, "max_concurrency": 2,
        "scheduling_strategy": NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False)}
    if detached:
        opts["lifetime"] = "detached"
    handle = ray.remote(KeeperActor).options(**opts).remote([str(d) for d in directories])
    ray.get(handle.check_now.remote())  # up, and Redis seen running
    return handle
