"""Published reference curves: the stored numbers, reading them at an env step, and drawing them
in reports and run curves. The references are the anchors quoted from the score files
(DreamerV2: 30k bins, mean [min-max] over 5 seeds; DreamerV3: 10 seeds)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from diswm.published import Published

ROOT = Path(__file__).resolve().parents[1]

# DreamerV2's published bins (0-30k, 30-60k, 90-120k): mean [min-max] over its 5 seeds.
DREAMERV2_BINS = {
    "cheetah_run": [(109, 82, 160), (254, 154, 360), (392, 318, 490)],
    "walker_walk": [(130, 83, 239), (303, 197, 466), (475, 430, 551)],
    "cartpole_swingup": [(115, 71, 171), (243, 153, 320), (541, 399, 725)],
    "reacher_easy": [(125, 74, 174), (158, 93, 254)],
}
# DreamerV3's published seeds at 20k (episodes within +-5k) and 100k (+-10k).
DREAMERV3 = {
    "cartpole_swingup": {20_000: (169, 119, 244), 100_000: (615, 342, 819)},
    "cheetah_run": {20_000: (129, 98, 172), 100_000: (337, 271, 450)},
    "walker_walk": {20_000: (189, 103, 280), 100_000: (639, 454, 844)},
}


@pytest.mark.parametrize("task", sorted(DREAMERV2_BINS))
def test_dreamerv2_bin_centres_are_the_published_bins(task):
    ref = Published.load()
    for centre, (mean, low, high) in zip((15_000, 45_000, 105_000), DREAMERV2_BINS[task], strict=False):
        p = ref.at("dreamerv2", f"dmc:{task}", centre)
        assert (round(p.mean), round(p.low), round(p.high), p.seeds) == (mean, low, high, 5)


def test_between_centres_each_seed_is_interpolated_before_the_spread():
    # Cheetah Run, each seed's 0-30k and 30-60k bins from the published file, by hand: at 30k
    # every seed sits halfway between its two bins.
    seeds = [(108.07, 259.77), (87.84, 231.95), (160.0, 359.95), (82.22, 154.25),
             (105.94, 261.8)]
    halfway = [(a + b) / 2 for a, b in seeds]
    p = Published.load().at("dreamerv2", "dmc:cheetah_run", 30_000)
    assert p.mean == pytest.approx(sum(halfway) / 5)
    assert (p.low, p.high) == (pytest.approx(min(halfway)), pytest.approx(max(halfway)))
    # Before the first centre: the first bin's value.
    assert Published.load().at("dreamerv2", "cheetah_run", 2_000).mean == pytest.approx(
        sum(a for a, _ in seeds) / 5)


@pytest.mark.parametrize("task", sorted(DREAMERV3))
def test_dreamerv3_points(task):
    ref = Published.load()
    for step, (mean, low, high) in DREAMERV3[task].items():
        p = ref.at("dreamerv3", f"dmc:{task}", step)
        assert (round(p.mean), round(p.low), round(p.high), p.seeds) == (mean, low, high, 10)


def test_every_transfer_task_has_both_references():
    ref = Published.load()
    for task in ("cheetah_run", "walker_walk", "hopper_stand", "reacher_easy",
                 "cartpole_swingup", "finger_spin"):
        assert ref.has("dreamerv2", task) and ref.has("dreamerv3", task), task
    assert not ref.has("dreamerv2", "mujoco:pusher")
    with pytest.raises(KeyError, match="mujoco:pusher"):
        ref.at("dreamerv2", "mujoco:pusher", 1000)


def test_band_starts_at_the_first_bin_centre_and_spans_the_seeds():
    xs, mean, low, high = Published.load().band("dreamerv2", "dmc:cheetah_run", upto=60_000)
    assert xs[0] == 15_000 and xs[-1] == 60_000
    assert (low <= mean).all() and (mean <= high).all()


def test_the_script_bins_dreamerv3_episodes_as_danijars_bin_scores(tmp_path):
    """Episodes at x in (start, stop] average into the bin ending at stop (a synthetic file)."""
    v2 = [{"task": f"dmc_{t}", "method": "dreamerv2", "seed": "0", "xs": [30000.0, 60000.0],
           "ys": [1.0, 2.0]} for t in ("cheetah_run", "walker_walk", "hopper_stand",
                                      "reacher_easy", "cartpole_swingup", "finger_spin")]
    v3 = [{"task": f"dmc_{t}", "method": "dreamerv3", "seed": 0,
           "xs": [10000, 9000, 10001, 25000], "ys": [4.0, 2.0, 8.0, 5.0]}
          for t in ("cheetah_run", "walker_walk", "hopper_stand", "reacher_easy",
                    "cartpole_swingup", "finger_spin")]
    (tmp_path / "v2.json").write_text(json.dumps(v2))
    (tmp_path / "v3.json.gz").write_bytes(gzip.compress(json.dumps(v3).encode()))
    out = tmp_path / "scores.json"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "published_scores.py"),
                    str(tmp_path / "v2.json"), str(tmp_path / "v3.json.gz"), "--out", str(out)],
                   check=True, capture_output=True)
    data = json.loads(out.read_text())
    seed = data["dreamerv3"]["tasks"]["cheetah_run"]["seeds"]["0"]
    assert seed[:3] == [3.0, 8.0, 5.0] and seed[3] is None  # (0,10k], (10k,20k], (20k,30k]
    assert data["dreamerv2"]["tasks"]["walker_walk"] == {"xs": [30000, 60000],
                                                         "seeds": {"0": [1.0, 2.0]}}


def test_the_end_of_a_run_names_dreamerv2s_published_return_at_its_env_step():
    from ops.runtime.job import published_note

    note = published_note("dmc:cheetah_run", 30_000)
    assert note == (", DreamerV2 published at 30000 env steps 181 [118–260] (5 seeds, clean DMC, "
                    "training episodes)")
    assert published_note("mujoco:pusher", 30_000) == ""
    assert published_note("dmc:cheetah_run", None) == ""


def test_the_end_of_a_run_gives_its_own_training_episodes_beside_them(tmp_path):
    from ops.runtime.job import training_note

    assert training_note(tmp_path, 4000) == ""  # a run without episodes.csv
    rows = [(2000, 5.0), (30000, 100.0), (31000, 150.0), (32100, 170.0)]
    (tmp_path / "episodes.csv").write_text(
        "env_steps,return\n" + "".join(f"{s},{r}\n" for s, r in rows))
    assert training_note(tmp_path, 4000) == (
        ", training episodes of the last 4000 env steps 140.0 (3)")
