"""Probe: the training-episode returns of a distributed run, read back from its replay.

    .venv/bin/python docs/results/dreamerv2-reproduction-cpu/probe_training_returns.py RUN OUT.csv

DreamerV2's published scores are training episodes (the exploring policy, as the actors act);
`eval.csv` has evaluation episodes (the actor's mode). This starts a redis-server on the run's
own AOF (`RUN/redis`), walks the commit log in insertion order (the env steps of a row count
every actor's steps stored before it, so they are the run's env steps to within a chunk), decodes only each chunk's small
fields (reward, is_first, is_last, policy_version; no images), and writes one row per finished
training episode in the columns of a run's ``episodes.csv`` (which runs now write themselves):
the env steps stored so far (all actors; action repeat 2), the episode's return, length and the
policy version that acted at its end. It prints means over 4,000-env-step windows.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from replay_service.blocks import decode_small, split_record
from replay_service.server import RedisServer


def training_returns(run: Path) -> list[dict]:
    spec = json.loads((run / "cluster.json").read_text())["spec"]
    prefix = f"diswm:{spec['namespace']}:"
    repeat = json.loads((run / "cluster.json").read_text())["config"]["env"]["action_repeat"]
    server = RedisServer(run / "redis", persistence="aof").start()
    try:
        client = server.client()
        rows, totals, lengths, inserted = [], {}, {}, 0
        for gid, fields in client.xrange(prefix + "log", "-", "+"):
            g = int(gid.decode().split("-")[0])
            stream = fields[b"s"].decode()
            record = client.get(f"{prefix}chunk:{g}")
            _, layout = split_record(record)
            offset, clen, _ = layout.sections[0]
            small = decode_small(layout, bytes(memoryview(record)[offset:offset + clen]))
            for k in range(layout.length):
                if small["is_first"][k]:  # a reset's observation: no env step, no reward
                    totals[stream], lengths[stream] = 0.0, 0
                    continue
                inserted += 1
                totals[stream] = totals.get(stream, 0.0) + float(small["reward"][k])
                lengths[stream] = lengths.get(stream, 0) + 1
                if small["is_last"][k]:
                    actor, env = (int(part[len(name):]) for part, name in
                                  zip(stream.split("/")[:2], ("actor", "env"), strict=True))
                    rows.append({"env_steps": inserted * repeat,
                                 "return": round(totals.pop(stream), 3),
                                 "length": lengths.pop(stream) * repeat,
                                 "policy_version": int(small["policy_version"][k]),
                                 "actor": actor, "env": env, "scheme": "", "id": ""})
        return rows
    finally:
        server.stop()


def main(run: str, out: str) -> None:
    rows = training_returns(Path(run))
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    steps = np.array([r["env_steps"] for r in rows])
    rets = np.array([r["return"] for r in rows])
    for hi in range(4000, int(steps.max()) + 4000, 4000):
        sel = (steps > hi - 4000) & (steps <= hi)
        if sel.any():
            print(f"({hi - 4000}, {hi}]: {rets[sel].mean():.1f} over {sel.sum()} episodes")


if __name__ == "__main__":
    main(*sys.argv[1:3])
