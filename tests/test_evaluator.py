"""Evaluation off the learner (learner/evaluator.py): a pure function of a weights snapshot, run in
its own Ray actor while the learner keeps training, recorded in order."""

from __future__ import annotations

import csv

import pytest
import torch
from test_learner import make_batch

from diswm.presets import load_config
from learner import Learner
from learner.evaluator import Evaluator, evaluation_snapshot

A = 6  # cheetah run, the tiny preset's task


def strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("eval_seconds", "wall_seconds")}


def test_an_evaluation_is_a_function_of_its_snapshot_and_leaves_the_rng_alone(tmp_path):
    cfg = load_config(["tiny"], ["train.eval_episodes=2"])
    learner = Learner(cfg, A)
    snapshot = evaluation_snapshot(learner, point=200, env_steps=203, scheme="B", seed=7)
    evaluator = Evaluator(cfg.to_dict(), A, tmp_path)
    before = torch.get_rng_state()
    first = evaluator.evaluate(snapshot)
    assert torch.equal(torch.get_rng_state(), before)  # training's random streams untouched
    learner.update(make_batch(cfg), agent_step=0)  # the live learner moves on ...
    second = Evaluator(cfg.to_dict(), A, tmp_path).evaluate(snapshot)  # ... the snapshot not
    assert strip(first) == strip(second)
    assert first["eval_step"] == 200 and first["env_steps"] == 203 and first["scheme"] == "B"
    assert first["episodes"] == 2 and first["updates"] == 0


def test_the_learner_trains_while_its_evaluation_actor_evaluates(tmp_path):
    ray = pytest.importorskip("ray")
    from learner.service import LearnerService
    from replay_service.client import ReplaySpec
    from replay_service.server import RedisServer

    cfg = load_config(["tiny"], ["replay.namespace=eval-actor", "train.eval_episodes=2"])
    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    try:
        with RedisServer(tmp_path / "redis", persistence="none") as server:
            spec = ReplaySpec.from_config(cfg, port=server.port, password=server.password)
            service = LearnerService(cfg, spec, tmp_path / "run", A, progress=lambda m: None)
            assert service.loop.evaluations.actor is not None
            batch = make_batch(cfg)
            service.learner.update(batch, agent_step=0)
            service.evaluate(env_steps=104, point=100)  # handed over, not waited for
            pending = service.loop.evaluations.pending
            snapshot = pending[0][0]
            assert len(pending) == 1 and not (tmp_path / "run" / "eval.csv").exists()
            for _ in range(3):  # training goes on meanwhile
                service.learner.update(batch, agent_step=0)
            service.evaluate(env_steps=201, point=200)
            assert service.collect_evaluations(block=True) == 2
            service.lease.release()
        rows = list(csv.DictReader((tmp_path / "run" / "eval.csv").open()))
        assert [int(r["eval_step"]) for r in rows] == [100, 200]  # in order
        assert [int(r["updates"]) for r in rows] == [1, 4]  # each at its snapshot
        local = Evaluator(cfg.to_dict(), A, tmp_path / "local").evaluate(snapshot)
        assert float(rows[0]["return_mean"]) == pytest.approx(local["return_mean"])
        assert float(rows[0]["openl_image_mse"]) == pytest.approx(local["openl_image_mse"])
    finally:
        ray.shutdown()
