"""Experiments and reports: aggregates against a plain computation, presets, a tiny end to end."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import stats

from diswm.presets import load_config
from ops.report import aggregate, load_run, report
from ops.runtime.experiment import BUDGETS, METHODS, TRANSFERS


def fake_run(root, name, task, method, seed, transfer, returns, every=100, jitter=0):
    run = root / name
    run.mkdir(parents=True)
    cfg = load_config(["tiny"], [f"env.task={task}", f"train.eval_every={every}"])
    cfg.save(run / "config.yaml")
    (run / "experiment.json").write_text(json.dumps(
        {"transfer": transfer, "method": method, "seed": seed}))
    with (run / "eval.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["env_steps", "updates", "scheme", "return_mean", "return_min", "return_max",
                    "episodes"])
        for i, value in enumerate(returns):
            w.writerow([i * every + jitter, i, "A", value, value, value, 1])
    return run


def test_report_aggregates_seeds_like_a_plain_computation(tmp_path):
    rng = np.random.default_rng(0)
    values = {(m, s): rng.normal(100 if m == "diswm" else 50, 10, size=4)
              for m in ("diswm", "dreamerv2") for s in range(3)}
    runs = [fake_run(tmp_path, f"{m}-{s}", "dmc:walker_walk", m, s,
                     "cheetah_run_to_walker_walk", v, jitter=(s * 7) % 30)
            for (m, s), v in values.items()]
    agg = aggregate([load_run(r) for r in runs])
    for method in ("diswm", "dreamerv2"):
        points = agg[("dmc:walker_walk", method)]
        assert [p["env_steps"] for p in points] == [0, 100, 200, 300]  # jitter aligned
        for i, point in enumerate(points):
            seeds = [values[(method, s)][i] for s in range(3)]
            assert point["mean"] == pytest.approx(np.mean(seeds))
            half = stats.t.ppf(0.975, 2) * np.std(seeds, ddof=1) / np.sqrt(3)
            assert point["ci"] == pytest.approx(half)
            assert point["n"] == 3
    out = report(runs, tmp_path / "report")
    assert (tmp_path / "report" / "dmc_walker_walk.png").stat().st_size > 1000
    table = (tmp_path / "report" / "results.md").read_text()
    assert "| cheetah_run_to_walker_walk | diswm | 3 | 300 |" in table
    assert "875 / 905" in table and "720 / 855" in table  # the paper's points beside ours
    rows = list(csv.DictReader((tmp_path / "report" / "aggregate.csv").open()))
    assert len(rows) == 8 and out["runs"] == 6


def test_two_evaluations_on_one_point_fail_loudly(tmp_path):
    """The committed runs had evaluations at 7,550 and 8,150 env steps that both rounded to
    8,000; the report kept the later and dropped the earlier. Now that is an error naming both."""
    run = fake_run(tmp_path, "a", "dmc:hopper_stand", "diswm", 0, None, [1.0, 2.0], every=1000)
    with (run / "eval.csv").open("a", newline="") as f:
        csv.writer(f).writerows([[7550, 5, "A", 5.8, 5.8, 5.8, 1],
                                 [8150, 6, "A", 46.6, 46.6, 46.6, 1]])
    with pytest.raises(ValueError, match=r"env steps 7550 and 8150 both fall on point 8000"):
        load_run(run)


def test_grid_points_align_runs_exactly(tmp_path):
    """Evaluations carry their grid point (eval_step): seeds line up on it whatever their actual
    env steps, and nothing is moved to a neighbouring point."""
    runs = []
    for seed, actual in enumerate(([1012, 2003, 2500], [1049, 2044, 2500])):
        run = fake_run(tmp_path, f"s{seed}", "dmc:hopper_stand", "diswm", seed, None, [],
                       every=1000)
        with (run / "eval.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["eval_step", "env_steps", "updates", "scheme", "return_mean"])
            for point, steps in zip((1000, 2000, 2500), actual, strict=True):
                w.writerow([point, steps, 1, "A", float(seed + point)])
        runs.append(load_run(run))
    points = aggregate(runs)[("dmc:hopper_stand", "diswm")]
    assert [p["env_steps"] for p in points] == [1000, 2000, 2500]
    assert [p["mean"] for p in points] == [1000.5, 2000.5, 2500.5]
    assert all(p["n"] == 2 for p in points)


def test_training_episodes_are_averaged_over_each_evaluations_window(tmp_path):
    run = fake_run(tmp_path, "r", "dmc:cheetah_run", "dreamerv2_repro", 0, None,
                   [1.0, 2.0, 3.0, 4.0], every=100)
    episodes = [(50, 10.0), (100, 20.0), (150, 30.0), (220, 40.0), (290, 50.0), (300, 60.0),
                (310, 70.0)]  # the last ends after the last evaluation (the actors' tail)
    with (run / "episodes.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["env_steps", "return", "length", "policy_version", "actor", "env", "scheme",
                    "id"])
        for steps, ret in episodes:
            w.writerow([steps, ret, 100, 0, 0, 0, "A", ""])
    loaded = load_run(run)
    # windows (-100, 0], (0, 100], (100, 200], (200, 300 and after]
    assert [(w["point"], w["return"], w["episodes"]) for w in loaded["training"]] == [
        (100, 15.0, 2), (200, 30.0, 1), (300, np.mean([40.0, 50.0, 60.0, 70.0]), 4)]
    table = report([run], tmp_path / "rep")["table"]
    assert "| 55.0 (55.0) |" in table


def test_single_seed_has_no_band(tmp_path):
    run = fake_run(tmp_path, "a", "dmc:hopper_stand", "diswm", 0, None, [1.0, 2.0])
    (point,) = aggregate([load_run(run)])[("dmc:hopper_stand", "diswm")][-1:]
    assert point == {"env_steps": 100, "mean": 2.0, "ci": 0.0, "n": 1}


def test_report_names_a_run_without_evaluations(tmp_path):
    run = fake_run(tmp_path, "a", "dmc:hopper_stand", "diswm", 0, None, [1.0])
    (run / "eval.csv").unlink()
    with pytest.raises(FileNotFoundError, match="no eval.csv"):
        report([run], tmp_path / "out")


@pytest.mark.parametrize("transfer", TRANSFERS)
def test_every_transfer_resolves_for_every_budget_and_method(transfer):
    for budget, presets in BUDGETS.items():
        for method, extra in METHODS.items():
            cfg = load_config([*presets, transfer, *extra])
            assert cfg.env.task and cfg.pretrain.source_task != cfg.env.task, (budget, method)


def test_bad_experiment_arguments_are_named(tmp_path):
    from diswm.config import ConfigError
    from ops.runtime.experiment import run_experiment

    with pytest.raises(ConfigError, match="unknown transfer 'nope'"):
        run_experiment("nope", out=tmp_path)
    with pytest.raises(ConfigError, match="unknown method 'dv3'"):
        run_experiment("cheetah_run_to_walker_walk", methods=["dv3"], out=tmp_path)
    with pytest.raises(ConfigError, match="unknown budget 'huge'"):
        run_experiment("cheetah_run_to_walker_walk", budget="huge", out=tmp_path)


def test_tiny_experiment_end_to_end(tmp_path):
    """Collect, pretrain, DisWM and DreamerV2 on the distributed runtime, and the report."""
    from ops.runtime.experiment import run_experiment

    summary = run_experiment(
        "cheetah_run_to_walker_walk", methods=["diswm", "dreamerv2"], seeds=1, budget="cpu",
        out=tmp_path / "exp", extra_presets=["tiny"],
        overrides=["train.steps=300", "pretrain.frames=101", "pretrain.updates=2",
                   "runtime.actors=1"], progress=lambda msg: None)
    runs = tmp_path / "exp" / "runs"
    assert (runs / "diswm-seed0" / "summary.json").exists()
    assert (runs / "dreamerv2-seed0" / "summary.json").exists()
    diswm_cfg = load_config([str(runs / "diswm-seed0" / "config.yaml")])
    assert diswm_cfg.distill.teacher.endswith("teacher.pt")
    assert not load_config([str(runs / "dreamerv2-seed0" / "config.yaml")]).distill.enabled
    assert "| cheetah_run_to_walker_walk | dreamerv2 | 1 |" in summary["table"]
    # The actors' training episodes (tiny: 100 env steps each; one actor, so the run's env
    # steps at each episode's end are exact), in the run folder and in the report.
    episodes = list(csv.DictReader((runs / "dreamerv2-seed0" / "episodes.csv").open()))
    steps = [int(e["env_steps"]) for e in episodes]  # the actor may finish one past the budget
    assert steps[:3] == [100, 200, 300] and steps == [100 * (k + 1) for k in range(len(steps))]
    assert all(int(e["length"]) == 100 and e["id"] and e["actor"] == "0" for e in episodes)
    mean = np.mean([float(e["return"]) for e in episodes if int(e["env_steps"]) > 200])
    assert f"| {mean:.1f} ({mean:.1f}) |" in summary["table"]  # the last window, (200, end]
    # A second call finds everything done and only reports again.
    again = run_experiment(
        "cheetah_run_to_walker_walk", methods=["diswm", "dreamerv2"], seeds=1, budget="cpu",
        out=tmp_path / "exp", extra_presets=["tiny"],
        overrides=["train.steps=300", "pretrain.frames=101", "pretrain.updates=2",
                   "runtime.actors=1"], progress=lambda msg: None)
    assert again["table"] == summary["table"]


def test_concurrent_runs_share_one_cluster_and_redis_without_seeing_each_other(tmp_path):
    """--parallel 2: both seeds run at once on one Ray and one Redis, each in its own namespace
    and placement group; afterwards each namespace holds exactly its own run's steps."""
    from diswm.control import RunControl
    from ops.runtime.experiment import run_experiment
    from replay_service.client import ReplaySpec, read_meta
    from replay_service.server import RedisServer

    lines: list[str] = []
    summary = run_experiment(
        "finger_spin_to_cartpole_swingup", methods=["dreamerv2"], seeds=2, budget="cpu",
        out=tmp_path / "exp", extra_presets=["tiny"], parallel=2,
        overrides=["train.steps=300", "runtime.actors=1"], progress=lines.append)
    assert summary["runs"] == 2
    assert any("running 2 runs, up to 2 at once" in line for line in lines)
    runs = tmp_path / "exp" / "runs"
    # Both were in flight together: each started before the other finished.
    starts = {n: next(i for i, ln in enumerate(lines) if ln.startswith(f"[{n}] run folder"))
              for n in ("finger_spin_to_cartpole_swingup-dreamerv2-seed0",
                        "finger_spin_to_cartpole_swingup-dreamerv2-seed1")}
    ends = {n: next(i for i, ln in enumerate(lines) if ln.startswith(f"[{n}] done in"))
            for n in starts}
    assert max(starts.values()) < min(ends.values()), lines
    # The shared Redis again, from its AOF: every namespace holds exactly its own run's steps.
    with RedisServer(tmp_path / "exp" / "redis", persistence="aof") as server:
        client = server.client()
        for name in starts:
            ns = name
            counters = RunControl(client, ns).counters()
            meta = read_meta(client, ReplaySpec(namespace=ns))
            # initial observation of its one stream + every agent step + each reset observation
            assert meta["inserts"] == 1 + counters["agent_steps"] + counters["episodes"], name
            assert counters["env_steps"] >= 300
        assert (runs / "dreamerv2-seed0" / "summary.json").exists()
        assert (runs / "dreamerv2-seed1" / "summary.json").exists()


def test_experiment_all_plans_the_whole_table(tmp_path):
    """`diswm experiment all`: every transfer of the paper's table, each in its own folder,
    every run with its own namespace, the right task and seed."""
    from ops.runtime.experiment import plan_runs

    runs, todo = plan_runs("all", methods=["dreamerv2"], seeds=2, budget="cpu",
                           out=tmp_path, progress=lambda m: None)
    assert len(runs) == len(todo) == len(TRANSFERS) * 2
    assert len({ns for *_, ns in todo}) == len(todo)  # one namespace per run
    for run_dir, cfg, _, _, ns in todo:
        transfer = run_dir.parent.parent.name
        assert transfer in TRANSFERS and ns.startswith(transfer)
        assert cfg.env.task == load_config([transfer]).env.task
        assert cfg.train.seed == int(run_dir.name[-1])
        meta = json.loads((run_dir / "experiment.json").read_text())
        assert meta["transfer"] == transfer


def test_a_failing_run_is_retried_then_named_and_the_others_are_reported(tmp_path):
    """One of two concurrent runs cannot start (a corrupt checkpoint in its folder): it is
    retried once, then the experiment fails naming it, with the other run done and reported."""
    from diswm.control import RunFailed
    from ops.runtime.experiment import run_experiment

    bad = tmp_path / "exp" / "runs" / "dreamerv2-seed1" / "checkpoints"
    bad.mkdir(parents=True)
    (bad / "latest.pt").write_bytes(b"not a checkpoint")
    lines: list[str] = []
    with pytest.raises(RunFailed, match=r"1 run\(s\) failed: .*dreamerv2-seed1.*latest\.pt"):
        run_experiment("finger_spin_to_cartpole_swingup", methods=["dreamerv2"], seeds=2,
                       budget="cpu", out=tmp_path / "exp", extra_presets=["tiny"], parallel=2,
                       retries=1, overrides=["train.steps=300", "runtime.actors=1"],
                       progress=lines.append)
    failures = [ln for ln in lines if "dreamerv2-seed1] failed" in ln]
    assert len(failures) == 2 and failures[0].endswith("retrying") \
        and failures[1].endswith("giving up"), failures
    assert (tmp_path / "exp" / "runs" / "dreamerv2-seed0" / "summary.json").exists()
    table = (tmp_path / "exp" / "report" / "results.md").read_text()
    assert "| dreamerv2 | 1 |" in table  # the finished seed is reported


def test_report_puts_the_published_seeds_beside_ours_at_the_same_env_steps(tmp_path):
    runs = [fake_run(tmp_path, f"s{s}", "dmc:cheetah_run", "dreamerv2_repro", s, None,
                     [5.0, 100.0, 150.0 + s], every=15_000) for s in range(2)]
    report(runs, tmp_path / "with")
    table = (tmp_path / "with" / "results.md").read_text()
    assert "published at this budget" in table
    # 30,000 env steps: DreamerV2's 5 seeds halfway between their 0-30k and 30-60k bins.
    assert "| dreamerv2 181 [118–260] |" in table
    report(runs, tmp_path / "both", published=("dreamerv2", "dreamerv3"))
    assert "dreamerv2 181 [118–260]; dreamerv3 185 [164–206]" in (
        tmp_path / "both" / "results.md").read_text()
    report(runs, tmp_path / "none", published=())
    assert "| – |" in (tmp_path / "none" / "results.md").read_text()
    with pytest.raises(ValueError, match="no published scores for 'dreamerv9'"):
        report(runs, tmp_path / "bad", published=("dreamerv9",))


def test_reproduce_plans_single_task_runs_without_a_teacher(tmp_path):
    from diswm.config import ConfigError
    from ops.runtime.experiment import plan_reproduction

    runs, todo = plan_reproduction(["dmc:cheetah_run", "dmc:cartpole_swingup"],
                                   methods=["dreamerv2_repro"], seeds=2, budget="cpu",
                                   out=tmp_path)
    names = [r.name for r in runs]
    assert names == ["cheetah_run-dreamerv2_repro-seed0", "cartpole_swingup-dreamerv2_repro-seed0",
                     "cheetah_run-dreamerv2_repro-seed1", "cartpole_swingup-dreamerv2_repro-seed1"]
    run_dir, cfg, teacher, _, namespace = todo[2]
    assert teacher is None and namespace == "reproduce-cheetah_run-dreamerv2_repro-seed1"
    assert (cfg.env.task, cfg.train.seed, cfg.distraction.enabled) == ("dmc:cheetah_run", 1, False)
    # DreamerV2's batch and train ratio, the CPU budget's sizes.
    assert (cfg.train.batch_size, cfg.train.batch_length, cfg.train.train_every) == (16, 50, 5)
    assert (cfg.model.cnn_depth, cfg.model.discrete, cfg.optim.adam_eps) == (16, 16, "keras")
    meta = json.loads((run_dir / "experiment.json").read_text())
    assert meta["task"] == "dmc:cheetah_run" and meta["transfer"] is None
    _, paper_todo = plan_reproduction(["dmc:cheetah_run"], methods=["dreamerv2_repro"], seeds=1,
                                      budget="paper", out=tmp_path / "paper")
    assert paper_todo[0][1].model.cnn_depth == 48  # DreamerV2's own sizes
    with pytest.raises(ConfigError, match="method 'diswm' needs a teacher"):
        plan_reproduction(["dmc:cheetah_run"], methods=["diswm"], seeds=1, budget="cpu",
                          out=tmp_path / "x")


def test_progress_line_says_when_the_learner_trains_its_owed_updates():
    from learner.loop import progress_line

    metrics = {"model_loss": 12.5, "eta": 0.05}
    line = progress_line(8000, 4000, 300, 500, (0.0, 2000, 100), (60.0, 4000, 300), metrics)
    assert "env step 4000/8000" in line and "33 env steps/s" in line and "ETA 2 min" in line
    tail = progress_line(8000, 8100, 700, 860, (0.0, 8100, 600), (60.0, 8100, 700), metrics)
    # 160 updates left at 100 updates a minute.
    assert tail.startswith("env steps done (8100/8000); training the updates still owed")
    assert "700/860, ETA 1.6 min" in tail and "env steps/s" not in tail
