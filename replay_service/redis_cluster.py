"""A replay sharded over a Redis Cluster: which keys live on which shard, and a local cluster.

With ``replay.shards = N > 1`` the replay's keys for shard k carry one hash tag,

    diswm:NS:{TAG_k}:meta, diswm:NS:{TAG_k}:log, diswm:NS:{TAG_k}:chunk:G, diswm:NS:{TAG_k}:schema

so every key a Lua script touches hashes to one slot (the scripts stay atomic) and each shard has
its own counters, commit log, rate limiter and FIFO, as each Reverb server does. ``TAG_k`` is
the first of ``s<k>``, ``s<k>.1``, ``s<k>.2``, ... whose hash slot falls in the k-th of N equal
slot ranges: the ranges that ``redis-cli --cluster create`` (and `LocalRedisCluster`) give N
masters, so shard k lives on master k. On a cluster laid out otherwise the replay still works;
`placement` tells which master holds each shard and the sampler warns if two share one.

    cluster = LocalRedisCluster(run_dir / "redis-cluster", shards=3).start()   # loopback, AOF
    spec = ReplaySpec(port=cluster.port, password=cluster.password, shards=3)
    ...
    cluster.stop()
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from replay_service.server import RedisServer, read_or_create_password


def unfed_shards(actor_indices, shards: int) -> list[int]:
    """The shards no running actor writes to: actor i writes shard i mod `shards`."""
    if shards <= 1:
        return []
    fed = {int(i) % shards for i in actor_indices}
    return [k for k in range(shards) if k not in fed]


def unfed_shards_note(actor_indices, shards: int) -> str:
    """One line naming the shards that stay empty (no writer), or "" when every shard has one."""
    empty = unfed_shards(actor_indices, shards)
    if not empty:
        return ""
    names = ", ".join(str(k) for k in empty)
    many = len(empty) > 1
    return (f"replay: shard{'s' if many else ''} {names} of {shards} get{'' if many else 's'} "
            "no writer "
            f"(actor i writes shard i mod {shards}) and stay empty; run at least {shards} "
            "actors to use every shard")


def slot_range(k: int, n: int) -> tuple[int, int]:
    """The k-th of n equal hash-slot ranges, [first, last] inclusive."""
    return k * REDIS_CLUSTER_HASH_SLOTS // n, (k + 1) * REDIS_CLUSTER_HASH_SLOTS // n - 1


@lru_cache(maxsize=4096)
def shard_tag(k: int, n: int) -> str:
    """Shard k of n's hash tag (without braces): its slot lies in `slot_range(k, n)`."""
    if not 0 <= k < n:
        raise ValueError(f"shard {k} of {n} does not exist")
    first, last = slot_range(k, n)
    j = 0
    while True:
        tag = f"s{k}" if j == 0 else f"s{k}.{j}"
        if first <= key_slot(tag.encode()) <= last:
            return tag
        j += 1


def placement(client, prefixes: list[str]) -> list[str]:
    """'host:port' of the master that holds each shard (by its keys' slot), from the cluster."""
    out = []
    for prefix in prefixes:
        node = client.nodes_manager.get_node_from_slot(key_slot((prefix + "meta").encode()))
        out.append(node.name if node is not None else "?")
    return out


class LocalRedisCluster:
    """`shards` redis-server nodes on loopback in cluster mode, one master each, sharing one
    password (generated into ``<dir>/redis.password``, mode 0600) and AOF persistence. Node k
    lives in ``<dir>/node<k>`` and owns `slot_range(k, shards)`. Starting again over the same
    folder restarts the same nodes (ports, node ids and slots from their ``nodes.conf``)."""

    def __init__(self, directory: str | Path, shards: int, *, host: str = "127.0.0.1",
                 password: str = "", persistence: str = "aof", fsync: str = "everysec",
                 maxmemory_bytes: int = 0, supervise: bool = False,
                 follow_parent: bool = False):
        if shards < 1:
            raise ValueError(f"a cluster needs at least one shard, got {shards}")
        self.dir = Path(directory).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shards = shards
        self.password = password or read_or_create_password(self.dir / "redis.password")
        ports = self._saved_ports()
        self.nodes = [RedisServer(self.dir / f"node{k}", host=host, port=ports.get(k, 0),
                                  password=self.password, persistence=persistence, fsync=fsync,
                                  maxmemory_bytes=maxmemory_bytes, supervise=supervise,
                                  follow_parent=follow_parent,
                                  cluster=True)
                      for k in range(shards)]
        for k, node in enumerate(self.nodes):
            node.cluster_port = ports.get(("bus", k), 0)

    @property
    def host(self) -> str:
        return self.nodes[0].host

    @property
    def port(self) -> int:
        """A startup node's port: the cluster client discovers the others from it."""
        return self.nodes[0].port

    def _saved_ports(self) -> dict:
        path = self.dir / "ports"
        out: dict = {}
        if path.exists():
            for k, line in enumerate(path.read_text().split()):
                port, bus = line.split(",")
                out[k], out[("bus", k)] = int(port), int(bus)
        return out

    def start(self, timeout: float = 30.0) -> LocalRedisCluster:
        for node in self.nodes:
            node.start()
        (self.dir / "ports").write_text(
            "".join(f"{n.port},{n.cluster_port}\n" for n in self.nodes))
        self._form(timeout)
        return self

    def _form(self, timeout: float) -> None:
        """Assign each node its slot range and introduce the nodes to each other (once: a
        restarted node takes both from its nodes.conf), then wait until every node sees all
        slots served."""
        formed = self.dir / "formed"
        if not formed.exists():
            clients = [n.client() for n in self.nodes]
            for k, client in enumerate(clients):
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", *slot_range(k, self.shards))
            first = self.nodes[0]
            for client in clients[1:]:
                client.execute_command("CLUSTER", "MEET", first.host, first.port,
                                       first.cluster_port)
        self.wait_ok(timeout)
        formed.write_text("1\n")

    def wait_ok(self, timeout: float = 30.0, nodes: list[int] | None = None) -> None:
        """Poll until the given nodes (all by default) report ``cluster_state:ok`` and know
        all `shards` masters."""
        deadline = time.monotonic() + timeout
        wanted = range(self.shards) if nodes is None else nodes
        while True:
            states = []
            for k in wanted:
                try:
                    info = self.nodes[k].client().cluster("info")
                    states.append(info.get("cluster_state") == "ok"
                                  and int(info.get("cluster_known_nodes", 0)) >= self.shards
                                  and int(info.get("cluster_slots_ok", 0))
                                  == REDIS_CLUSTER_HASH_SLOTS)
                except redis.ConnectionError:
                    states.append(False)
            if all(states):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Redis cluster in {self.dir} did not become ready within "
                                   f"{timeout:.0f} s (nodes ok: {states})")
            time.sleep(0.05)  # polling with a deadline

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

