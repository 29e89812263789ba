"""The `diswm` console script: envs list/show and bench envs, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from ops.cli import main


def test_envs_list(capsys):
    assert main(["envs", "list"]) == 0
    out = capsys.readouterr().out.split()
    assert "dmc:cheetah_run" in out and "mujoco:pusher" in out
    assert main(["envs", "list", "--all"]) == 0
    assert "dmc:humanoid_run" in capsys.readouterr().out


def test_envs_show_png_grid(tmp_path, capsys):
    out = tmp_path / "frames.png"
    assert main(["envs", "show", "dmc:cheetah_run", "--scheme", "B", "--frames", "6",
                 "--every", "3", "--scale", "1", "--out", str(out)]) == 0
    image = iio.imread(out)
    # 6 frames -> a 3x2 grid of 64x64 tiles with 2-pixel padding.
    assert image.shape == (2 * 66 + 2, 3 * 66 + 2, 3)
    tiles = [image[2 + r * 66:2 + r * 66 + 64, 2 + c * 66:2 + c * 66 + 64]
             for r in range(2) for c in range(3)]
    assert all(t.std() > 0 for t in tiles)
    assert not np.array_equal(tiles[0], tiles[1])
    assert "scheme B" in capsys.readouterr().out


def test_envs_show_gif(tmp_path):
    out = tmp_path / "pusher.gif"
    assert main(["envs", "show", "mujoco:pusher", "--frames", "5", "--out", str(out)]) == 0
    frames = iio.imread(out, index=None)
    assert frames.shape[0] == 5 and frames.shape[1:3] == (128, 128)


def test_envs_show_errors(tmp_path, capsys):
    assert main(["envs", "show", "dmc:nope", "--out", str(tmp_path / "x.png")]) == 2
    assert "unknown task 'dmc:nope'" in capsys.readouterr().err
    assert main(["envs", "show", "dmc:cheetah_run", "--out", str(tmp_path / "x.jpg")]) == 2
    assert "must end in .png or .gif" in capsys.readouterr().err
    assert not (tmp_path / "x.jpg").exists()


def test_bench_envs_writes_ratios(tmp_path, capsys):
    out = tmp_path / "bench" / "envs.json"
    assert main(["bench", "envs", "--steps", "5", "--rounds", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rates = report["env_steps_per_s"]
    assert set(rates) == {"full_render", "no_shadows_render", "fast_render", "physics_only"}
    assert all(r["median"] > 0 for r in rates.values())
    assert report["fast_render_speedup"] == pytest.approx(
        rates["fast_render"]["median"] / rates["full_render"]["median"])
    assert report["machine"]["cpu_count"] >= 1 and "git_commit" in report["machine"]


def test_console_script_entry_point():
    """The installed `diswm` script (next to this interpreter) exits 2 naming the bad key."""
    exe = Path(sys.executable).parent / "diswm"
    assert exe.exists(), "the package is not installed with its console script"
    result = subprocess.run([str(exe), "config", "show", "--set", "env.task=dmc:bad"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "env.task: unknown task 'dmc:bad'" in result.stderr


def test_bench_replay_writes_ratios(tmp_path):
    out = tmp_path / "replay.json"
    assert main(["bench", "replay", "--config", "tiny", "--steps", "240", "--batches", "2",
                 "--rounds", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    insert, sample = report["insert_steps_per_s"], report["sample_batches_per_s"]
    stores = {"inprocess", "redis_lz4", "redis_zstd", "redis_none", "redis_lz4_whole_chunks"}
    assert set(insert) == stores
    assert set(sample) == stores | {"redis_lz4_cached", "redis_lz4_workers"}
    assert report["sample_workers"] >= 2 and report["sample_worker_restarts"] == 0
    assert report["insert_ratio_vs_inprocess"] == pytest.approx(
        insert["redis_lz4"]["median"] / insert["inprocess"]["median"])
    for key, case in (("sample_ratio_vs_inprocess", "redis_lz4"),
                      ("sample_ratio_vs_inprocess_cached", "redis_lz4_cached"),
                      ("sample_ratio_vs_inprocess_workers", "redis_lz4_workers"),
                      ("sample_ratio_whole_chunk_records", "redis_lz4_whole_chunks")):
        assert report[key] == pytest.approx(
            sample[case]["median"] / sample["inprocess"]["median"]), key
    assert report["compression_ratio"]["lz4"] > 1.0
    assert report["compression_ratio"]["none"] == pytest.approx(1.0, abs=0.01)


def test_bench_learner_reports_flop_rate_against_a_same_run_peak(tmp_path, capsys):
    out = tmp_path / "learner.json"
    assert main(["bench", "learner", "--sizes", "debug", "--config", "tiny", "--modes", "eager",
                 "bf16", "--rounds", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    r = report["results"]["debug"]
    assert set(r["seconds_per_update"]) == {"eager", "bf16"}
    peaks = report["matmul_peak_gflops"]
    assert set(peaks) == {"fp32", "bf16"} and min(peaks.values()) > 0
    for mode, dtype in (("eager", "fp32"), ("bf16", "bf16")):
        gflops = r["gflop_per_update"] / r["seconds_per_update"][mode]
        assert r["gflops"][mode] == pytest.approx(gflops)
        assert r["fraction_of_matmul_peak"][mode] == pytest.approx(gflops / peaks[dtype])
    assert r["speedup_vs_eager"]["eager"] == pytest.approx(1.0)
    # Slow rates stay readable in the progress lines (not "0/s").
    assert "/s" in capsys.readouterr().err


def test_bench_learner_with_a_teacher_times_stored_latents(tmp_path, capsys):
    """--teacher: every learner has a frozen teacher; stored_teacher's batches carry its latents,
    so its update counts fewer FLOPs, and its speed-up is over fastconv_compile in the same run."""
    out = tmp_path / "learner.json"
    assert main(["bench", "learner", "--sizes", "debug", "--config", "tiny", "--modes", "eager",
                 "fastconv_compile", "stored_teacher", "--teacher", "--rounds", "1",
                 "--set", "train.compile=false", "--json", str(out)]) == 0
    r = json.loads(out.read_text())["results"]["debug"]
    assert r["teacher"] is True
    assert 0 < r["gflop_per_update_stored_teacher"] < r["gflop_per_update"]
    sec = r["seconds_per_update"]
    assert r["stored_teacher_speedup"] == pytest.approx(sec["fastconv_compile"]
                                                        / sec["stored_teacher"])
    capsys.readouterr()
    assert main(["bench", "learner", "--sizes", "debug", "--config", "tiny", "--modes", "eager",
                 "stored_teacher"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("diswm: error:") and "--teacher" in err[-1]


def test_host_memory_ab_runs_both_settings_in_fresh_processes():
    from ops.bench.learner import host_memory_reuse_ab

    ab = host_memory_reuse_ab("debug", "eager", presets=["tiny"], updates=1, rounds=2,
                              progress=None)
    assert {k: len(v) for k, v in ab["seconds_per_update_all"].items()} == {"on": 2, "off": 2}
    med = ab["seconds_per_update"]
    assert ab["speedup"] == pytest.approx(med["off"] / med["on"])
    # Each child reports its own peak (VmHWM), not the parent's (ru_maxrss survives exec).
    assert 0 < max(ab["process_peak_rss_bytes"].values()) < 4 * 2**30
    with pytest.raises(ValueError, match="host_memory"):
        from ops.bench.learner import bench_learner
        bench_learner(host_memory="jemalloc")


def test_format_rate_is_readable_at_any_speed():
    from ops.bench.common import format_rate

    assert format_rate(412.3) == "412/s"
    assert format_rate(3.414) == "3.41/s"
    assert format_rate(0.25) == "4 s each"
    assert format_rate(0.0) == "none"


@pytest.mark.parametrize("argv, needle", [
    (["experiment", "cheetah_run_to_walker_walk", "--tasks", "dmc:cheetah_run"], "--tasks is for"),
    (["experiment", "reproduce", "--baselines"], "--baselines is for transfers"),
    (["experiment", "reproduce", "--methods", "diswm", "--out", "{tmp}"], "needs a teacher"),
    (["report", "{tmp}", "--out", "{tmp}/r"], "not a run"),
])
def test_experiment_and_report_arguments_fail_in_one_line(argv, needle, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("diswm: error:") and needle in err[-1], err[-1]
