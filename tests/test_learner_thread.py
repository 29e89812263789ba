"""The learner does its CPU work on one thread. PyTorch's OpenMP runtime (libgomp) keeps a pool of
worker threads per calling thread; once two threads of a process have used it, libgomp counts more
pool threads than cores and stops spinning at its barriers, so every parallel op sleeps and wakes
(5,000-6,000 context switches a second on this 2-core machine, 1.5x slower updates). The learner
actor once built the learner on Ray's thread and trained on its own loop thread."""

from __future__ import annotations

import threading

from test_learner import A, make_batch

from diswm.presets import load_config
from learner import Learner
from replay_service.client import ReplaySpec
from replay_service.server import RedisServer


def test_update_on_another_thread_than_the_builder_warns_once(tiny_cfg):
    lines: list[str] = []
    learner = Learner(tiny_cfg, A, log=lines.append)
    batch = make_batch(tiny_cfg)
    learner.update(batch)  # the building thread: nothing to say
    assert not [m for m in lines if "thread" in m]

    def two_updates() -> None:
        learner.update(batch)
        learner.update(batch)
    t = threading.Thread(target=two_updates)
    t.start()
    t.join(timeout=120)
    assert not t.is_alive()
    warned = [m for m in lines if "thread" in m]
    assert len(warned) == 1 and "OpenMP" in warned[0], lines


def test_learner_actor_builds_and_trains_on_its_loop_thread(tmp_path):
    from learner.ray_learner import LearnerActor

    cfg = load_config(["tiny"], ["replay.namespace=thread-test", "runtime.eval_actor=false"])
    with RedisServer(tmp_path / "redis", persistence="none") as server:
        spec = ReplaySpec.from_config(cfg, port=server.port, password=server.password)
        actor = LearnerActor(cfg.to_dict(), spec, str(tmp_path / "run"), A)
        try:
            assert actor.service is not None and actor._thread is not None
            assert actor.service.learner.built_on == actor._thread.ident
        finally:
            actor.stop()
        assert not [m for m in actor.lines if "OpenMP" in m]
