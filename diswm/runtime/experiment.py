"""`diswm experiment TRANSFER`: one command per row of the paper's table.

    diswm experiment cheetah_run_to_walker_walk --baselines dreamerv2 --seeds 2 --budget cpu

1. collect (or reuse) distracting videos of the transfer's source task -> ``OUT/data``;
2. pretrain (or reuse) a teacher per beta_2 the methods need -> ``OUT/teacher-beta<b>/`` (and
   DreamerV2's conv model for DV2-finetune -> ``OUT/pretrained-conv/``);
3. train every method x seed on the distributed runtime (`run_job`) -> ``OUT/runs/<method>-seed<k>``
   (the colour scheme switches at the midpoint; a finished run is skipped, an interrupted one
   resumes from its checkpoint and its Redis AOF);
4. ``diswm report`` over all runs -> ``OUT/report/`` (curves, aggregate CSV, markdown table).

Budgets: ``paper`` is the paper's (1M env steps, batch 50x50; for GPU machines); ``cpu`` is the
``quickstart`` sizes (8,000 env steps, a small model): one method x seed takes about 9 minutes
on a 2-core CPU, so DisWM vs DreamerV2 with 2 seeds each fits in well under an hour.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from diswm.config import Config, ConfigError, load_config, preset_names, replace
from diswm.runfolder import private_dir

METHODS: dict[str, tuple[str, ...]] = {
    "diswm": (), "dreamerv2": ("dreamerv2",), "dv2_finetune": ("dv2_finetune",),
    "no_distill": ("no_distill",), "no_beta": ("no_beta",),
}
BUDGETS: dict[str, tuple[str, ...]] = {"paper": (), "cpu": ("cpu",)}
TRANSFERS = ("cheetah_run_to_walker_walk", "reacher_easy_to_cheetah_run",
             "cheetah_run_to_hopper_stand", "finger_spin_to_reacher_easy",
             "finger_spin_to_cartpole_swingup", "reacher_easy_to_pusher")


def ensure_teacher(cfg: Config, data: Path, folder: Path, progress: Callable[[str], None]
                   ) -> Path:
    """The teacher of `cfg.pretrain` on `data`, collected and trained only if missing."""
    from pretrain.collect import collect
    from pretrain.trainer import CHECKPOINT, PretrainRunner

    teacher = folder / "teacher.pt"
    if teacher.exists():
        progress(f"reusing teacher {teacher}")
        return teacher
    p = cfg.pretrain
    progress(f"collecting {p.frames} frames of {p.source_task} into {data} (resumable)")
    collect(cfg, data, task=p.source_task, frames=p.frames, workers=max(p.workers, 1))
    resume = (folder / CHECKPOINT).exists()
    progress(f"pretraining beta_2={p.beta:g} ({p.updates} updates) in {folder}"
             + (" (resuming)" if resume else ""))
    runner = PretrainRunner(cfg, folder, data=None if resume else data, resume=resume,
                            progress=progress)
    runner.run()
    runner.plot()
    return runner.write_teacher()


def run_experiment(transfer: str, *, methods: Sequence[str] = ("diswm",), seeds: int = 1,
                   budget: str = "cpu", out: str | Path, overrides: Sequence[str] = (),
                   extra_presets: Sequence[str] = (),
                   progress: Callable[[str], None] = print) -> dict[str, Any]:
    from diswm.report import report
    from diswm.runtime.job import run_job

    if transfer not in TRANSFERS:
        raise ConfigError(f"unknown transfer {transfer!r}; valid: {', '.join(TRANSFERS)}")
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget {budget!r}; valid: {', '.join(BUDGETS)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method {unknown[0]!r}; valid: {', '.join(METHODS)}")
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    assert set(TRANSFERS) <= set(preset_names())
    out = Path(out).resolve()
    plans = []
    for method in methods:
        presets = [*BUDGETS[budget], *extra_presets, transfer, *METHODS[method]]
        cfg = load_config(presets, overrides)
        teacher = None
        if cfg.distill.enabled or cfg.distill.finetune:
            # DisWM's teachers are beta-VAE video models (one per beta_2); DV2-finetune
            # pretrains DreamerV2's own conv architecture on the same videos.
            name = (f"teacher-beta{cfg.pretrain.beta:g}" if cfg.model.encoder == "beta_vae"
                    else f"pretrained-{cfg.model.encoder}")
            teacher = ensure_teacher(cfg, out / "data", out / name, progress)
        plans.append((method, presets, cfg, teacher))
    runs = []
    for seed in range(seeds):  # seed-major: every method's seed 0 comes first
        for method, presets, cfg, teacher in plans:
            run_dir = out / "runs" / f"{method}-seed{seed}"
            runs.append(run_dir)
            if (run_dir / "summary.json").exists():
                progress(f"{run_dir.name}: done already, skipped")
                continue
            private_dir(run_dir)
            (run_dir / "experiment.json").write_text(json.dumps(
                {"transfer": transfer, "method": method, "seed": seed, "budget": budget,
                 "presets": presets, "overrides": list(overrides)}, indent=2) + "\n")
            progress(f"=== {transfer}: {method}, seed {seed} -> {run_dir}")
            run_job(replace(cfg, train={"seed": seed}), run_dir,
                    teacher=str(teacher) if teacher else None, skip_pretrain=True,
                    progress=progress)
            report(runs, out / "report")  # the report grows as runs finish
    summary = report(runs, out / "report")
    progress(f"report: {out / 'report' / 'results.md'}\n{summary['table']}")
    return summary
