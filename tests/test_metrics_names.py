"""Metric names: DESIGN.md's conventions, and docs/dashboards that name only real metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from diswm import metrics

ROOT = Path(__file__).resolve().parents[1]


def defined() -> dict[str, object]:
    return {name: obj for name, obj in vars(metrics).items()
            if isinstance(obj, (Counter, Gauge, Histogram))}


def exported_names() -> set[str]:
    names = set()
    for obj in defined().values():
        base = obj._name  # noqa: SLF001 - the family name prometheus_client exports
        if isinstance(obj, Counter):
            names.add(base + "_total")
        elif isinstance(obj, Histogram):
            names |= {base, base + "_bucket", base + "_sum", base + "_count"}
        else:
            names.add(base)
    return names


def test_naming_conventions():
    for obj in defined().values():
        name = obj._name  # noqa: SLF001
        assert name.startswith("diswm_"), name
        labels = set(obj._labelnames)  # noqa: SLF001
        assert labels <= {"actor", "namespace"}, f"{name}: unbounded label set {labels}"
        if isinstance(obj, Gauge):
            assert not name.endswith("_total"), f"gauge {name} must not end in _total"
        if "seconds" in name or "bytes" in name:
            assert name.endswith(("_seconds", "_bytes", "_bytes_total")), name


def test_design_minimum_set_exists():
    names = exported_names()
    for required in ("diswm_actor_env_steps_total", "diswm_actor_episodes_total",
                     "diswm_actor_episode_return_count", "diswm_replay_inserted_steps_total",
                     "diswm_replay_sampled_sequences_total", "diswm_replay_size_steps",
                     "diswm_replay_size_bytes", "diswm_replay_insert_wait_seconds_bucket",
                     "diswm_replay_sample_wait_seconds_bucket", "diswm_learner_updates_total",
                     "diswm_learner_update_duration_seconds_bucket",
                     "diswm_learner_policy_version", "diswm_actor_policy_lag",
                     "diswm_learner_policy_lag_bucket", "diswm_learner_weight_broadcast_seconds_count",
                     "diswm_actor_restarts_total", "diswm_replay_corrupt_records_total",
                     "diswm_replay_rejected_steps_total"):
        assert required in names, required


def test_docs_and_dashboard_name_only_real_metrics():
    names = exported_names()
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "deploy" / "README.md"]
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    sources = [(str(p.relative_to(ROOT)), p.read_text()) for p in docs]
    assert any("diswm_learner_updates_total" in text for _, text in sources)  # the manual names them
    for source, text in [*sources, ("grafana-dashboard.json", exprs)]:
        for name in set(re.findall(r"diswm_[a-z_]+", text)):
            if name.endswith("_"):  # a prefix such as diswm_replay_* in prose
                continue
            assert name in names, f"{source} names {name}, which no process exports"
