"""Rebuild diswm/configs/published_scores.json from the published score files.

    python scripts/published_scores.py DV2_JSON DV3_JSON_GZ [--out diswm/configs/published_scores.json]

DV2_JSON: `scores/dmc-vision-dreamerv2.json` of danijar/dreamerv2 (5 seeds, training-episode
returns already averaged in 30k-env-step bins; each x is a bin's right edge). DV3_JSON_GZ:
`scores/dmc_vision-dreamerv3.json.gz` of danijar/dreamerv3 (10 seeds, one point per training
episode); its episodes are averaged here into 10k-env-step bins the way danijar's plotting code
bins scores (`bin_scores`: the mean of the episodes with start < x <= stop, x = stop). Both are
kept up to 1M env steps, for the tasks of the paper's transfers plus finger_spin. Plain JSON in,
plain JSON out (no pickle).
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np

TASKS = ("cheetah_run", "walker_walk", "hopper_stand", "reacher_easy", "cartpole_swingup",
         "finger_spin")
LIMIT = 1_000_000
V3_BIN = 10_000


def dreamerv2(path: Path) -> dict:
    runs = json.loads(path.read_text())
    tasks: dict = {}
    for r in runs:
        task = r["task"].removeprefix("dmc_")
        if task not in TASKS:
            continue
        xs = [int(x) for x in r["xs"] if x <= LIMIT]
        entry = tasks.setdefault(task, {"xs": xs, "seeds": {}})
        assert entry["xs"] == xs, (task, "seeds on different bins")
        entry["seeds"][str(r["seed"])] = [round(float(y), 2) for y in r["ys"][:len(xs)]]
    return {"bin": 30_000, "episodes": "training", "source":
            "danijar/dreamerv2 scores/dmc-vision-dreamerv2.json (configs.yaml defaults + "
            "dmc_vision; action repeat 2; x = env steps at a bin's right edge)", "tasks": tasks}


def dreamerv3(path: Path) -> dict:
    runs = json.loads(gzip.decompress(path.read_bytes()))
    borders = np.arange(0, LIMIT + 1, V3_BIN)
    tasks: dict = {}
    for r in runs:
        task = r["task"].removeprefix("dmc_")
        if task not in TASKS:
            continue
        xs, ys = np.asarray(r["xs"], float), np.asarray(r["ys"], float)
        order = np.argsort(xs, kind="stable")
        xs, ys = xs[order], ys[order]
        values = []
        for start, stop in zip(borders[:-1], borders[1:], strict=True):
            sel = ys[(xs > start) & (xs <= stop)]
            values.append(round(float(sel.mean()), 2) if len(sel) else None)
        entry = tasks.setdefault(task, {"xs": [int(b) for b in borders[1:]], "seeds": {}})
        entry["seeds"][str(r["seed"])] = values
    return {"bin": V3_BIN, "episodes": "training", "source":
            "danijar/dreamerv3 scores/dmc_vision-dreamerv3.json.gz (train ratio 512; action "
            "repeat 2; episodes averaged here in 10k-env-step bins, x = a bin's right edge)",
            "tasks": tasks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dreamerv2", type=Path)
    ap.add_argument("dreamerv3", type=Path)
    ap.add_argument("--out", type=Path, default=Path("diswm/configs/published_scores.json"))
    args = ap.parse_args()
    data = {"dreamerv2": dreamerv2(args.dreamerv2), "dreamerv3": dreamerv3(args.dreamerv3)}
    for method, d in data.items():
        missing = set(TASKS) - set(d["tasks"])
        assert not missing, (method, missing)
    args.out.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} kB)")


if __name__ == "__main__":
    main()
