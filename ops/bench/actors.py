"""`diswm bench actors`: what the actor shell costs, and how actors scale, on this machine.

* baseline: the same K envs stepped in a plain loop with the same policy in this process (no Ray,
  no replay, no metrics; one torch thread, as an actor), measured before and after the Ray cases
  (their mean);
* 1 actor: a Ray `EnvActor` doing the same stepping and streaming every step into a real Redis
  replay (limiter off), counting through the run's control plane;
* 2 actors: the same with two.

Keys: ``actor_efficiency_vs_raw_env`` = 1-actor env steps/s / baseline env steps/s and
``scaling_2_vs_1`` = 2-actor env steps/s / 1-actor env steps/s. Also the weight broadcast cost:
``weight_publish_seconds`` (learner side) and ``weight_fetch_seconds`` (actor side).

The plain loop runs with both policy settings (`runtime.policy_compile` off and on), each before
and after the Ray cases: ``policy_compile_speedup`` = compiled-policy loop env steps/s / eager
loop env steps/s (means of before/after), ``policy_step_ms`` the policy call alone in each
setting, and ``policy_compile_seconds`` the first compiled call (kept out of every rate). The
baseline of ``actor_efficiency_vs_raw_env`` is the loop with the config's own setting.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from typing import Any

import numpy as np
import torch

from diswm.agent import Policy
from diswm.broadcast import WeightStore
from diswm.config import Config, replace
from diswm.control import RunControl
from diswm.envs import make_env
from ops.bench.common import write_report


def _plain_loop(cfg: Config, weights, seconds: float, *, compile_policy: bool) -> dict:
    """Env steps/s of K envs + the batched policy in one plain loop, the policy's share of it
    (ms per call) and its compile time (the first call, before the clock starts)."""
    k = cfg.runtime.envs_per_actor
    envs = [make_env(cfg.env, cfg.distraction, seed=1000 + j) for j in range(k)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every actor runs its policy (actors/ray_actor.py)
    try:
        dim = envs[0].act_space.shape[0]
        policy = Policy(cfg, dim, k, compile=compile_policy)
        policy.load_weights(*weights)
        obs = [env.reset() for env in envs]

        def batch():
            return {"image": np.stack([o["image"] for o in obs]),
                    "is_first": np.array([o["is_first"] for o in obs])}

        start = time.perf_counter()
        policy(batch())  # compiles here when asked to
        compile_seconds = time.perf_counter() - start if compile_policy else 0.0
        if compile_policy and policy.compile_state != "compiled":
            raise RuntimeError(f"the policy step did not compile ({policy.compile_state})")
        steps = calls = 0
        in_policy, start = 0.0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            actions = policy(batch())
            in_policy += time.perf_counter() - t0
            calls += 1
            for j, env in enumerate(envs):
                before = env.episode_env_steps
                obs[j] = env.step(actions[j])
                steps += env.episode_env_steps - before
                if obs[j]["is_last"]:
                    obs[j] = env.reset()
        return {"env_steps_per_s": steps / (time.perf_counter() - start),
                "policy_step_ms": 1e3 * in_policy / max(calls, 1),
                "compile_seconds": compile_seconds}
    finally:
        torch.set_num_threads(threads)
        for env in envs:
            env.close()


def _actors_rate(cluster, control: RunControl, n: int, warmup: float, seconds: float) -> float:
    cluster.scale(n)
    time.sleep(warmup)  # let new actors build envs and reach steady state (a measurement window)
    before, start = control.counters()["env_steps"], time.perf_counter()
    time.sleep(seconds)  # the measurement window itself
    return (control.counters()["env_steps"] - before) / (time.perf_counter() - start)


def bench_actors(cfg: Config, *, seconds: float = 20.0, warmup: float = 8.0, json_path=None,
                 progress=print) -> dict[str, Any]:
    import ray

    from learner.learner import Learner
    from ops.runtime.cluster import Cluster

    cfg = replace(cfg, train={"prefill": 0, "steps": 10**12},  # no budget to run out of
                  replay={"rate_limit": False,
                                                       "namespace": f"bench-{uuid.uuid4().hex[:6]}"},
                  runtime={"actors": 0})
    with make_env(cfg.env, cfg.distraction, seed=0) as env:
        action_dim = int(env.act_space.shape[0])
    learner = Learner(cfg, action_dim, device="cpu")
    weights = learner.get_weights("policy")
    own = cfg.runtime.policy_compile
    loops: dict[bool, list[dict]] = {False: [], True: []}

    def plain_loops(when: str) -> None:
        for compiled in (own, not own):  # the config's own setting first, then the other
            progress(f"baseline {when}: {cfg.runtime.envs_per_actor} env(s) + "
                     f"{'compiled' if compiled else 'eager'} policy in a plain loop, "
                     f"{seconds:.0f}s")
            loops[compiled].append(_plain_loop(cfg, weights, seconds, compile_policy=compiled))

    plain_loops("before")
    with tempfile.TemporaryDirectory(prefix="diswm-bench-actors-") as tmp:
        cluster = Cluster.create(cfg, tmp, num_cpus=4)
        try:
            client = cluster.redis_client()
            store = WeightStore(client, cluster.namespace)
            publish = [store.publish(*weights)[1] for _ in range(5)]
            nbytes = len(client.get(f"diswm:{cluster.namespace}:weights"))
            fetch = []
            for _ in range(5):
                start = time.perf_counter()
                Policy(cfg, action_dim, 1).load_weights(*store.fetch())
                fetch.append(time.perf_counter() - start)
            control = RunControl(client, cluster.namespace)
            progress(f"1 actor, {seconds:.0f}s")
            one = _actors_rate(cluster, control, 1, warmup, seconds)
            progress(f"2 actors, {seconds:.0f}s")
            two = _actors_rate(cluster, control, 2, warmup, seconds)
        finally:
            cluster.shutdown()
            if ray.is_initialized():
                ray.shutdown()
    plain_loops("after")
    rate = {c: [r["env_steps_per_s"] for r in loops[c]] for c in loops}
    baseline = float(np.mean(rate[own]))
    return write_report(json_path, {
        "bench": "actors", "task": cfg.env.task, "render_quality": cfg.env.render_quality,
        "envs_per_actor": cfg.runtime.envs_per_actor, "seconds_per_case": seconds,
        "policy_compile": own,
        "baseline": "plain loop: the same envs and policy in one process, mean of before/after",
        "env_steps_per_s": {"plain_loop_before": rate[own][0], "plain_loop_after": rate[own][1],
                            "plain_loop_eager_policy": rate[False],
                            "plain_loop_compiled_policy": rate[True],
                            "one_actor": one, "two_actors": two},
        "policy_compile_speedup": float(np.mean(rate[True]) / np.mean(rate[False])),
        "policy_step_ms": {"eager": [r["policy_step_ms"] for r in loops[False]],
                           "compiled": [r["policy_step_ms"] for r in loops[True]]},
        "policy_compile_seconds": [r["compile_seconds"] for r in loops[True]],
        "actor_efficiency_vs_raw_env": one / baseline,
        "scaling_2_vs_1": two / one,
        "weight_bytes": nbytes,
        "weight_publish_seconds": float(np.median(publish)),
        "weight_fetch_seconds": float(np.median(fetch)),
    })
