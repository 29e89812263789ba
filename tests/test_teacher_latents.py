"""The frozen teacher's latents computed once per frame by the actors and stored in the replay
(diswm/agent/teacher.py), on a real redis-server and real dm_control envs: the learner's update
is the one it computes from its own teacher, every stored latent is the teacher's for its
frame, an older replay without them keeps working, and a missing teacher fails in bounded time."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from diswm.agent.teacher import (
    FIELD,
    TeacherLatents,
    fetch_teacher,
    publish_teacher,
    stores_teacher_latents,
)
from diswm.models import VideoModel
from diswm.presets import load_config
from learner import Learner
from replay_service.client import ReplaySampler, ReplaySpec
from tests.test_learner import make_batch


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    cfg = load_config(["tiny"])
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save({"video_model": VideoModel(cfg.model).state_dict()}, path)
    return path


def run_cfg(teacher_path, *extra):
    return load_config(["tiny"], [f"distill.teacher={teacher_path}", "train.precision=fp32",
                                  *extra])


def test_only_a_distilling_run_with_a_teacher_stores_latents(teacher_path):
    assert stores_teacher_latents(run_cfg(teacher_path))
    assert not stores_teacher_latents(run_cfg(teacher_path, "distill.teacher_latents=learner"))
    assert not stores_teacher_latents(run_cfg(teacher_path, "distill.enabled=false"))
    assert not stores_teacher_latents(load_config(["tiny"]))  # no teacher


def test_an_update_on_stored_latents_is_the_update_on_the_learners_own(teacher_path):
    """Two learners from the same seed: one computes the teacher's latents itself, the other
    takes them from the batch (computed as an actor does). Every metric and every weight after
    the update agree; a wrong stored latent changes the distillation term (the test can fail)."""
    cfg = run_cfg(teacher_path)
    batch = make_batch(cfg)
    own, stored = Learner(cfg, 6), Learner(cfg, 6)
    teacher = TeacherLatents(stored.teacher)
    B, T = batch["image"].shape[:2]
    z = teacher(batch["image"].reshape(B * T, 64, 64, 3)).reshape(B, T, -1)
    assert z.dtype == np.float32 and z.shape == (B, T, cfg.model.z_dim)
    torch.manual_seed(1)  # the same noise for both updates
    m_own = own.update(batch)
    torch.manual_seed(1)
    m_stored = stored.update({**batch, FIELD: z})
    for key, value in m_own.items():
        if key != "update_seconds":
            assert m_stored[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    for (name, a), b in zip(own.state_dict().items(), stored.state_dict().values(), strict=True):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    torch.manual_seed(1)
    wrong = Learner(cfg, 6).update({**batch, FIELD: np.zeros_like(z)})
    assert abs(wrong["model/distill"] - m_own["model/distill"]) > 1e-3
    with pytest.raises(ValueError, match="z_teacher must be float32"):
        Learner(cfg, 6).update({**batch, FIELD: z[:, :, :3]})


@pytest.mark.parametrize("envs", [1, 3])
def test_actors_store_the_teachers_latent_of_every_frame(teacher_path, redis_server, envs):
    """The learner publishes its teacher; an actor fetches it and stores every step's latent
    (one teacher call for its envs' new frames). Every sampled latent is the learner's
    teacher's for that sampled frame."""
    from actors.worker import ActorWorker

    cfg = run_cfg(teacher_path, "train.prefill=0", f"runtime.envs_per_actor={envs}")
    spec = ReplaySpec.from_config(cfg, port=redis_server.port, password=redis_server.password)
    learner = Learner(cfg, 6)  # the tiny preset runs dmc:cheetah_run: 6 actions
    publish_teacher(redis_server.client(), spec.namespace, learner.teacher)
    worker = ActorWorker(cfg, 0, spec, sync_every=1)
    assert worker.teacher is not None
    for _ in range(60):
        worker.step()
    worker.close()
    batch = ReplaySampler(spec, seed=1).sample(4, 8)
    assert batch[FIELD].shape == (4, 8, cfg.model.z_dim)
    with torch.no_grad():
        want = learner.teacher(torch.as_tensor(batch["image"]), sample=False)[0]
    torch.testing.assert_close(torch.as_tensor(batch[FIELD]), want.float(), rtol=1e-5,
                               atol=1e-5)


def test_an_older_replay_without_latents_keeps_working(teacher_path, redis_server):
    """A run resumed on a replay that holds steps without z_teacher: the actor does not store
    them (its steps would be refused by the namespace's schema) and the learner computes them."""
    from actors.worker import ActorWorker

    old_cfg = run_cfg(teacher_path, "train.prefill=0", "distill.teacher_latents=learner")
    spec = ReplaySpec.from_config(old_cfg, port=redis_server.port,
                                  password=redis_server.password)
    old = ActorWorker(old_cfg, 0, spec, sync_every=1)
    for _ in range(20):
        old.step()
    old.close()
    cfg = run_cfg(teacher_path, "train.prefill=0")
    learner = Learner(cfg, 6)  # the tiny preset runs dmc:cheetah_run: 6 actions
    publish_teacher(redis_server.client(), spec.namespace, learner.teacher)
    new = ActorWorker(cfg, 1, spec, sync_every=1)
    assert new.teacher is None
    for _ in range(20):
        new.step()
    new.close()
    batch = ReplaySampler(spec, seed=2).sample(4, 8)
    assert FIELD not in batch
    assert np.isfinite(learner.update(batch)["model/distill"])


def test_an_actor_without_a_published_teacher_fails_in_bounded_time(teacher_path, redis_server):
    from actors.worker import ActorWorker

    cfg = run_cfg(teacher_path, "replay.wait_timeout=0.5")
    spec = ReplaySpec.from_config(cfg, port=redis_server.port, password=redis_server.password)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=f"diswm:{spec.namespace}:teacher"):
        ActorWorker(cfg, 0, spec, sync_every=1)
    assert time.monotonic() - start < 10


def test_fetched_teacher_is_the_published_one_and_a_bad_record_is_refused(teacher_path,
                                                                          redis_server):
    from diswm.broadcast import BadWeights

    cfg = run_cfg(teacher_path)
    learner = Learner(cfg, 6)
    client = redis_server.client()
    publish_teacher(client, "t", learner.teacher)
    got = fetch_teacher(client, "t", cfg, timeout=1)
    for (name, a), b in zip(learner.teacher.state_dict().items(),
                            got.encoder.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    client.set("diswm:t:teacher", client.get("diswm:t:teacher")[:-50])
    with pytest.raises(BadWeights):
        fetch_teacher(client, "t", cfg, timeout=1)


def test_stored_latents_do_not_recompile_the_warmed_up_world_model_loss(teacher_path):
    """The compiled world-model loss is warmed up on a synthetic batch (the learner computes
    the teacher's latents) and then trains on stored ones: both must reach it with the same
    layout, or every run pays a second compile (minutes cold). Counted with a backend that
    records each graph it is given."""
    from diswm.models.compiled import Compiled

    cfg = run_cfg(teacher_path, "train.compile=true")
    learner = Learner(cfg, 6)
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    learner._wm_loss = Compiled(learner.wm.loss, "world-model loss", backend=counting_backend)
    learner._ac_loss = Compiled(learner.ac.loss, "actor-critic loss", enabled=False)
    learner.warm_up()
    warmed = len(graphs)
    assert warmed > 0 and learner._wm_loss.state == "compiled"
    batch = make_batch(cfg)
    B, T = batch["image"].shape[:2]
    z = TeacherLatents(learner.teacher)(batch["image"].reshape(B * T, 64, 64, 3))
    learner.update({**batch, FIELD: z.reshape(B, T, -1)})
    learner.update(batch)  # and the learner's own latents again
    assert len(graphs) == warmed
