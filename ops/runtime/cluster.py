"""Starting, scaling, inspecting and stopping a run's processes on Ray.

    cluster = Cluster.create(cfg, run_dir)       # a local redis-server + ray.init (or an address)
    cluster.start_learner(action_dim)
    cluster.scale(4)                             # live: adds or stops named actors
    cluster.status()
    cluster.shutdown()                           # actors flush, learner checkpoints

`diswm run` uses it within one driver process; `diswm cluster up|scale|status|down` uses it with
detached actors on a `ray start --head` cluster, keeping what later commands need in
``<run_dir>/cluster.json``. The Ray head and a run's placement are in `ray_head.py`, the Redis
password and process in `redis_process.py`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from diswm.atomic import atomic_write
from diswm.config import Config, build_config
from diswm.control import NamespaceLease, RunFailed
from diswm.runfolder import CHECKPOINT, private_dir
from diswm.signals import ray_init
from diswm.storage import DRIVER_FILES, RunStorage, storage_name
from diswm.supervision import one_line
from ops.runtime.ray_head import (
    cluster_gpus,
    ray_cpus,
    start_ray_head,
    stop_ray_head,
    use_ray_token,
)
from ops.runtime.redis_process import (
    password_record,
    redis_maxmemory,
    redis_password,
    redis_pid,
    shutdown_redis,
    stored_password,
)
from replay_service.client import ReplaySampler, ReplaySpec, read_meta
from replay_service.redis_cluster import LocalRedisCluster
from replay_service.server import RedisServer, read_or_create_password
from replay_service.spec import connect as replay_connect

STATE_FILE = "cluster.json"


def action_dim_of(cfg: Config) -> int:
    from diswm.envs import make_env

    with make_env(cfg.env, cfg.distraction, seed=0) as env:
        return int(env.act_space.shape[0])


class Cluster:
    def __init__(self, cfg: Config, run_dir: Path, spec: ReplaySpec, *, detached: bool,
                 redis: RedisServer | None = None, ray_address: str = ""):
        self.cfg, self.run_dir, self.spec = cfg, Path(run_dir), spec
        self.detached, self.redis, self.ray_address = detached, redis, ray_address
        self.namespace = spec.namespace
        # Non-detached actors live only while a handle does: keep them here.
        self.handles: dict[str, Any] = {}
        self._client = None
        self.ray_head: int | None = None  # process group of a Ray head we started
        # Set for a run that shares Ray and Redis with others (concurrent experiment runs): its
        # learner and actors go into this placement group, and shutdown leaves Ray and Redis.
        self.placement_group = None
        self.shared = False
        self.password_file: str | None = None  # the file that holds the Redis password

    # -- creation ------------------------------------------------------------------------------
    @classmethod
    def create(cls, cfg: Config, run_dir: str | Path, *, detached: bool = False,
               num_cpus: int | None = None, placement_group=None) -> Cluster:
        """Start (or reach) Redis and Ray for a run whose config is saved in `run_dir`."""
        run_dir = Path(run_dir).resolve()
        private_dir(run_dir)
        if cfg.runtime.storage:  # a storage that cannot be written fails before anything starts
            RunStorage(cfg.runtime.storage, storage_name(run_dir, cfg.runtime.storage)).check()
        if detached and not cfg.runtime.ray_address:
            use_ray_token(run_dir, create=True)  # before Ray is imported: it reads it once
        import ray

        redis_server = None
        nodes: tuple[str, ...] = ()
        if cfg.replay.port:  # an existing Redis or Redis Cluster (multi-machine): start none
            password = redis_password(cfg) or read_or_create_password(run_dir / "redis.password")
            port = cfg.replay.port
        elif cfg.replay.shards > 1:  # a local Redis Cluster, one master per shard
            redis_server = LocalRedisCluster(
                run_dir / "redis", cfg.replay.shards, host=cfg.replay.host,
                password=redis_password(cfg), persistence=cfg.replay.persistence,
                fsync=cfg.replay.fsync,
                maxmemory_bytes=redis_maxmemory(cfg) // cfg.replay.shards + (256 << 20),
                supervise=True, follow_parent=not detached).start()
            password, port = redis_server.password, redis_server.port
            nodes = tuple(f"{n.host}:{n.port}" for n in redis_server.nodes[1:])
        else:
            redis_server = RedisServer(run_dir / "redis", host=cfg.replay.host,
                                       password=redis_password(cfg),
                                       persistence=cfg.replay.persistence,
                                       fsync=cfg.replay.fsync,
                                       maxmemory_bytes=redis_maxmemory(cfg),
                                       supervise=True, follow_parent=not detached).start()
            password, port = redis_server.password, redis_server.port
        spec = replace(ReplaySpec.from_config(cfg, port=port, password=password),
                       cluster_nodes=nodes)
        address, head = cfg.runtime.ray_address, None
        if detached and not address:
            address, head = start_ray_head(run_dir, num_cpus or ray_cpus(cfg))
        if not ray.is_initialized():
            if address:
                ray_init(address=address, namespace=spec.namespace, log_to_driver=False)
            else:
                ray_init(address="local",  # always our own instance, never a stray one
                         num_cpus=num_cpus or ray_cpus(cfg), include_dashboard=False,
                         namespace=spec.namespace, log_to_driver=False)
        cluster = cls(cfg, run_dir, spec, detached=detached, redis=redis_server,
                      ray_address=address)
        cluster.password_file = str(password_record(cfg, run_dir, password))
        cluster.ray_head = head
        if redis_server is not None:  # our own Redis: keep its supervisor up too
            from ops.runtime.redis_keeper import start_keeper

            servers = (redis_server.nodes if isinstance(redis_server, LocalRedisCluster)
                       else [redis_server])
            cluster.handles["redis-keeper"] = start_keeper(  # a handle keeps it alive
                spec.namespace, [s.dir for s in servers], detached=detached)
        if placement_group is not None:  # a run inside a shared cluster (experiment --parallel)
            cluster.placement_group, cluster.shared = placement_group, True
        cluster.save_state()
        return cluster

    @classmethod
    def attach(cls, run_dir: str | Path) -> Cluster:
        """Reach a cluster started by `diswm cluster up` from its run folder."""
        run_dir = Path(run_dir).resolve()
        state_path = run_dir / STATE_FILE
        if not state_path.exists():
            raise ValueError(f"no cluster state at {state_path}; start one with "
                                    "`make cluster-up` (diswm cluster up)")
        state = json.loads(state_path.read_text())
        use_ray_token(run_dir)  # before Ray is imported: it reads the token once
        import ray

        cfg = build_config(state["config"])
        # The password is not in the state file: it comes from where the run took it.
        fields = {**state["spec"], "password": stored_password(cfg, run_dir,
                                                                state.get("password_file"))}
        fields["cluster_nodes"] = tuple(fields.get("cluster_nodes", ()))
        spec = ReplaySpec(**fields)
        if not ray.is_initialized():
            ray_init(address=state["ray_address"], namespace=spec.namespace, log_to_driver=False)
        cluster = cls(cfg, run_dir, spec, detached=True, ray_address=state["ray_address"])
        cluster.redis_pid = state.get("redis_pid")
        cluster.password_file = state.get("password_file")
        cluster.ray_head = state.get("ray_head")
        return cluster

    def save_state(self) -> None:
        spec = asdict(self.spec)
        spec.pop("password")  # secrets stay in their file or the environment
        state = {"config": self.cfg.to_dict(), "spec": spec, "ray_address": self.ray_address,
                 "redis_pid": redis_pid(self.redis),
                 "ray_head": self.ray_head, "namespace": self.namespace,
                 # where the password is (never the password): every later command finds it
                 "password_file": self.password_file}
        atomic_write(self.run_dir / STATE_FILE, json.dumps(state, indent=2))  # mode 0600

    # -- processes -----------------------------------------------------------------------------
    def _options(self, name: str) -> dict[str, Any]:
        opts: dict[str, Any] = {"name": name, "namespace": self.namespace, "max_restarts": -1,
                                "max_concurrency": 4}
        if self.detached:
            opts["lifetime"] = "detached"
        if self.placement_group is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                self.placement_group, placement_group_capture_child_tasks=True)
        return opts

    def start_learner(self, action_dim: int):
        import ray

        from learner.ray_learner import LearnerActor

        # Refuse before anything starts if another live run holds the namespace (the learner
        # takes the lease itself; this says it in one line instead of a failed Ray actor).
        lease = NamespaceLease(self.redis_client(), self.namespace, str(self.run_dir))
        holder = lease.holder()
        if holder not in (None, str(self.run_dir)):
            lease.acquire()  # raises NamespaceHeld naming the live run (unless it just ended)
            lease.release()
        self._hand_over()
        gpus = self.cfg.runtime.learner_gpus if cluster_gpus() > 0 else 0
        opts = self._options("learner") | {"num_gpus": gpus,
                                           "num_cpus": self.cfg.runtime.learner_cpus}
        handle = ray.remote(LearnerActor).options(**opts).remote(
            self.cfg.to_dict(), self.spec, str(self.run_dir), action_dim,
            self.cfg.runtime.metrics_host,
            self.storage.name if self.storage is not None else "")
        try:
            ray.get(handle.pid.remote())  # wait until it is up (it publishes weights at start)
        except ray.exceptions.RayActorError as err:
            raise RunFailed(f"the learner failed to start: {_cause(err)}") from None
        self.handles["learner"] = handle
        self.refresh_targets()
        return handle

    def _hand_over(self) -> None:
        """What the learner needs from this machine, where any node reaches it: the teacher's
        weights in Redis, and (with a storage) the driver's files in the storage."""
        d = self.cfg.distill
        if d.teacher and (d.enabled or d.finetune):
            from diswm.agent.teacher import publish_pretrained
            from diswm.models.video import load_pretrained

            publish_pretrained(self.redis_client(), self.namespace, load_pretrained(d.teacher))
        if self.storage is not None:
            self.storage.push(self.run_dir, [n for n in DRIVER_FILES
                                             if (self.run_dir / n).exists()])
            if (self.run_dir / CHECKPOINT).exists() and str(CHECKPOINT) not in self.storage.files():
                self.storage.push(self.run_dir)  # a run resumed with a storage for the first time

    @property
    def storage(self) -> RunStorage | None:
        """The run's storage (runtime.storage), or None: the learner writes the run folder."""
        if not hasattr(self, "_storage"):
            uri = self.cfg.runtime.storage
            self._storage = RunStorage.for_run(uri, storage_name(self.run_dir, uri))
        return self._storage

    def pull(self, checkpoints: bool = True) -> list[str]:
        """The learner's files from the storage into the run folder (none without a storage);
        `checkpoints=False` leaves the checkpoints there (a quick look)."""
        if self.storage is None:
            return []
        return self.storage.pull(self.run_dir, skip=() if checkpoints else ("checkpoints/",))

    def learner(self):
        import ray

        return ray.get_actor("learner", namespace=self.namespace)

    def keeper(self):
        """The keeper of this run's own Redis (ops/runtime/redis_keeper.py)."""
        import ray

        from ops.runtime.redis_keeper import NAME

        return ray.get_actor(NAME, namespace=self.namespace)

    def _actor_set(self) -> str:
        return f"diswm:{self.namespace}:actors"

    def redis_client(self):
        """One client for the cluster's bookkeeping (actor set, targets, counters)."""
        if self._client is None:
            # One Redis, or the Redis Cluster of a sharded replay.
            self._client = replay_connect(self.spec)
        return self._client

    def actor_names(self) -> list[str]:
        """Names of the actors this run started that Ray still knows."""
        import ray

        names = []
        for raw in self.redis_client().smembers(self._actor_set()):
            name = raw.decode()
            try:
                ray.get_actor(name, namespace=self.namespace)
            except ValueError:
                continue
            names.append(name)
        return sorted(names, key=lambda n: int(n.split("-")[1]))

    def scale(self, n: int, timeout: float = 180.0) -> list[str]:
        """Make exactly `n` actors run (live): new ones start, surplus ones flush and stop."""
        import ray

        from actors.ray_actor import EnvActor

        if n < 0:
            raise ValueError(f"actor count must be >= 0, got {n}")
        client = self.redis_client()
        indices = sorted(int(name.split("-")[1]) for name in self.actor_names())
        for index in indices[n:]:
            handle = ray.get_actor(f"actor-{index}", namespace=self.namespace)
            ray.get(handle.stop.remote(), timeout=timeout)
            ray.kill(handle, no_restart=True)
            client.srem(self._actor_set(), f"actor-{index}")
            self.handles.pop(f"actor-{index}", None)
        wanted = max(n - len(indices), 0)
        if self.placement_group is not None and n > self.cfg.runtime.actors:
            raise ValueError(f"this run reserved room for {self.cfg.runtime.actors} actors in its "
                             f"placement group; cannot run {n}")
        custom = self.cfg.runtime.actor_resource_map()
        # A run in a placement group has its actors' room reserved; otherwise check it now.
        if wanted and self.placement_group is None:
            available = ray.available_resources()
            for name, amount in custom.items():
                if wanted * amount > available.get(name, 0.0) + 1e-9:
                    total = ray.cluster_resources().get(name, 0.0)
                    raise ValueError(
                        f"cannot start {wanted} more actors asking for {name}={amount:g} each "
                        f"(runtime.actor_resources): the cluster has {available.get(name, 0.0):g} "
                        f"of {total:g} free. Add a node with `ray start --address=HEAD "
                        f"--resources='{{\"{name}\": N}}'` (deploy/README.md)")
            free_cpus = available.get("CPU", 0.0)
            if wanted > free_cpus:
                total = ray.cluster_resources().get("CPU", 0.0)
                fit = len(indices[:n]) + int(free_cpus)
                raise ValueError(
                    f"cannot run {n} actors: each needs 1 CPU and Ray has {free_cpus:g} of its "
                    f"{total:g} CPUs free, so {fit} actors fit. Add resources: join another node "
                    "with `ray start --address=HEAD --num-cpus=N` (deploy/README.md), or start the "
                    "cluster with room to grow: diswm cluster up --ray-cpus N")
        started = []
        free = [i for i in range(n + len(indices)) if i not in indices]
        for index in free[:max(n - len(indices), 0)]:
            opts = self._options(f"actor-{index}") | {"num_cpus": 1}
            if custom:
                opts["resources"] = custom
            handle = ray.remote(EnvActor).options(**opts).remote(
                self.cfg.to_dict(), index, self.spec, self.cfg.runtime.metrics_host)
            client.sadd(self._actor_set(), f"actor-{index}")
            self.handles[f"actor-{index}"] = handle
            started.append(handle)
        try:
            ray.get([h.pid.remote() for h in started], timeout=timeout)
        except ray.exceptions.RayActorError as err:
            raise RunFailed(f"an actor failed to start: {_cause(err)}") from None
        self.refresh_targets()
        return self.actor_names()

    def _ray_actor_names(self) -> list[str]:
        """The run's actors as Ray names them (when Redis, which lists them, cannot answer)."""
        import ray

        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a.get("namespace") == self.namespace and re.fullmatch(r"actor-\d+", a["name"])]
        return sorted(names, key=lambda n: int(n.split("-")[1]))

    def refresh_targets(self) -> Path:
        """Rewrite the Prometheus file_sd targets from the processes registered in Redis."""
        from diswm import telemetry

        return telemetry.write_file_sd(self.run_dir / "prometheus" / "targets.json",
                                       telemetry.targets(self.redis_client(), self.namespace),
                                       self.namespace)

    def status(self) -> dict[str, Any]:
        """Everything `cluster status` shows; ``problems`` lists what is down or failing (one
        line each: Redis unreachable, the learner gone or stopped by crashes, actors' errors)
        and ``healthy`` is True only when it is empty."""
        import ray
        import redis

        from diswm.control import RunControl
        from diswm.rediskit import describe_failure, probe

        out: dict[str, Any] = {"run_dir": str(self.run_dir), "namespace": self.namespace,
                               "replay": None, "learner": None, "actors": []}
        problems: list[str] = []
        try:  # a probe first: a stopped or hung Redis is reported within seconds
            quick = probe(self.spec.host, self.spec.port, self.spec.password, PROBE_TIMEOUT)
            quick.ping()
            if self.spec.shards > 1:
                quick = replay_connect(replace(self.spec, outage_window=5))
            redis_up = True
        except redis.RedisError as err:
            redis_up = False
            since = _last_line(self.run_dir / "redis" / "supervisor.log")
            problems.append(describe_failure(self.spec.host, self.spec.port, err, PROBE_TIMEOUT)
                            + (f"; its supervisor's last event: {since}" if since else ""))
        if redis_up:
            sampler = ReplaySampler(self.spec)
            try:
                out["replay"] = sampler.stats()
            finally:
                sampler.close()
            for k in out["replay"].get("shards_unreachable", []):
                problems.append(f"replay shard {k} of {self.spec.shards} is unreachable (its "
                                "steps are not sampled until it is back; see "
                                f"{self.run_dir / 'redis' / f'node{k}'})")
            if self.storage is not None:  # the learner's own copy is in its node's scratch
                self.refresh_targets()
            errors = RunControl(quick, self.namespace).errors()
            out["errors"] = errors
            problems += [f"{role}: {message}" for role, message in sorted(errors.items())]
        # Every role at once, with one deadline: a role that does not answer is named, and
        # the status never waits on them one after the other.
        calls: dict[str, Any] = {}
        try:
            calls["learner"] = self.learner().stats.remote()
        except ValueError:
            problems.append("learner: not running")
        for name in self.actor_names() if redis_up else self._ray_actor_names():
            try:
                calls[name] = ray.get_actor(name, namespace=self.namespace).stats.remote()
            except ValueError:
                continue  # gone since it was listed
        replies = _gather(calls, timeout=STATS_TIMEOUT)
        for name, reply in replies.items():
            if isinstance(reply, BaseException):
                why = (f"no answer within {STATS_TIMEOUT:g} s"
                       if isinstance(reply, ray.exceptions.GetTimeoutError)
                       else type(reply).__name__)
                problems.append(f"{name}: unreachable ({why})")
                if name != "learner":
                    out["actors"].append({"name": name, "error": f"{type(reply).__name__}: "
                                                                 f"{reply}"[:300]})
                continue
            if name == "learner":
                out["learner"] = reply
                if reply.get("failed"):
                    problems.append(f"learner: {reply['error']}")
                if skipped := reply.get("skipped_updates"):
                    problems.append(f"learner: {skipped} update(s) skipped because their loss "
                                    "or gradients were not finite (non-finite data in the "
                                    "replay, or divergence; see the learner's log)")
            else:
                if reply.get("failed"):
                    problems.append(f"{name}: {reply['failed']}")
                out["actors"].append(reply)
        if self.storage is not None:  # the run folder shows what the learner has stored
            try:
                out["storage"] = {"uri": self.cfg.runtime.storage,
                                  "copied": self.pull(checkpoints=False)}
            except Exception as err:  # noqa: BLE001 - any backend's failure is one line
                problems.append(f"storage {self.cfg.runtime.storage}: cannot read the run's "
                                f"files ({type(err).__name__}: {err})"[:300])
        out["problems"] = list(dict.fromkeys(problems))  # each once, in order
        out["healthy"] = not out["problems"]
        out["metrics_targets"] = str(self.run_dir / "prometheus" / "targets.json")
        return out

    def shutdown(self, stop_ray: bool | None = None) -> dict[str, Any] | None:
        """Stop actors (they flush partial episodes), then the learner (final checkpoint);
        Ray and Redis stop even if that fails (the error is raised afterwards)."""
        import ray

        summary = None
        try:
            self.scale(0)
            try:
                handle = self.learner()
                try:
                    summary = ray.get(handle.stop.remote(), timeout=600)
                except ray.exceptions.RayActorError:
                    summary = None  # a learner that died (or never started) has nothing to stop
                ray.kill(handle, no_restart=True)
                self.handles.pop("learner", None)
            except ValueError:
                pass
        finally:
            try:  # the learner's last checkpoint and summary into the run folder
                self.pull()
            except Exception as err:  # noqa: BLE001 - stopping matters more; say where they are
                print(f"diswm: the run's files stay in {self.cfg.runtime.storage}: could not "
                      f"copy them into {self.run_dir} ({type(err).__name__}: {err})"[:300])
            try:  # before Redis stops: nothing may start it again
                ray.kill(self.keeper(), no_restart=True)
            except ValueError:
                pass  # a run on a Redis it did not start has no keeper
            if not self.shared:  # a shared Ray and Redis outlive this run
                ray.shutdown()
            if self.ray_head and (stop_ray if stop_ray is not None else self.detached):
                stop_ray_head(self.ray_head, self.ray_address)  # only the head we started
            if self.redis is not None:
                self.redis.stop()
            elif getattr(self, "redis_pid", None):
                shutdown_redis(self.spec)
        return summary

    def replay_meta(self) -> dict[str, int]:
        return read_meta(self.redis_client(), self.spec)


def _cause(err: BaseException) -> str:
    """The original exception line inside a Ray actor error (its traceback is in Ray's logs)."""
    text = str(err)
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.strip().startswith(("File ", "^", "~"))]
    errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Held|Failed):", ln)]
    return (errors[-1] if errors else one_line(text))[:400]


PROBE_TIMEOUT = 2.0  # seconds Redis has to answer `cluster status`'s probe
STATS_TIMEOUT = 10.0  # seconds every role together has to answer `cluster status`


def _gather(calls: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Ray object refs by name -> their values, or the exception each raised; refs not ready
    within `timeout` seconds (all together) get GetTimeoutError."""
    import ray

    if not calls:
        return {}
    refs = list(calls.values())
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    ready = set(ready)
    out: dict[str, Any] = {}
    for name, ref in calls.items():
        if ref not in ready:
            out[name] = ray.exceptions.GetTimeoutError(f"{name} did not answer")
            continue
        try:
            out[name] = ray.get(ref, timeout=1)
        except Exception as err:  # noqa: BLE001 - report, do not fail the status
            out[name] = err
    return out


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""
