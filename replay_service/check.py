"""`diswm replay check RUN`: the replay's records, commit log and counters agree.

    report = check_replay(client, spec)   # {"consistent": bool, "problems": [...], ...}

Checked, for one namespace: every logged chunk (the stream ``log``, one entry per live global
sequence number) has its record and every record its log entry; the log covers exactly the live
range ``(evicted, gseq]``; the sums of the entries' step, byte and raw-byte counts equal the
``size_steps``, ``size_bytes`` and ``raw_bytes`` counters; and every counter is an integer.
Records are not decoded (that is the sampler's job, which skips and counts corrupt ones); this
is about bookkeeping the insert script could leave inconsistent. A sharded replay is checked
shard by shard (each has its own counters, log and records); problems name their shard.
"""

from __future__ import annotations

from typing import Any

import redis

from replay_service.client import ReplaySpec

_COUNTERS = ("inserts", "samples", "gseq", "evicted", "size_steps", "size_bytes", "raw_bytes")


def check_replay(client: redis.Redis, spec: ReplaySpec, batch: int = 1000) -> dict[str, Any]:
    """Check one namespace; safe on a live replay: the counters and the log are read in one
    transaction (a consistent snapshot), records are scanned after it, and inserts or evictions
    that land in between are told apart from real inconsistencies."""
    if spec.shards == 1:
        return _check_shard(client, spec, spec.prefix, batch)
    reports = [_check_shard(client, spec, prefix, batch) for prefix in spec.shard_prefixes]
    meta = {name: sum(r["meta"][name] for r in reports) for name in _COUNTERS}
    problems = [f"shard {k}: {p}" for k, r in enumerate(reports) for p in r["problems"]]
    return {"namespace": spec.namespace, "consistent": not problems, "problems": problems,
            "chunks": sum(r["chunks"] for r in reports),
            "records": sum(r["records"] for r in reports), "meta": meta,
            "shards": [{k: r[k] for k in ("chunks", "records", "meta")} for r in reports]}


def _check_shard(client: redis.Redis, spec: ReplaySpec, prefix: str, batch: int
                 ) -> dict[str, Any]:
    problems: list[str] = []
    with client.pipeline(transaction=True) as pipe:
        pipe.hgetall(prefix + "meta")
        pipe.xrange(prefix + "log", min="-", max="+")
        raw, entries = pipe.execute()
    meta: dict[str, int] = {}
    for name in _COUNTERS:
        value = raw.get(name.encode(), b"0")
        try:
            meta[name] = int(value)
        except ValueError:
            problems.append(f"counter {name} holds {value[:40]!r}, not an integer")
            meta[name] = 0
    sums = {"n": 0, "b": 0, "r": 0}
    logged: set[int] = set()
    for entry_id, fields in entries:
        logged.add(int(entry_id.split(b"-")[0]))
        if isinstance(fields, list):  # a cluster pipeline leaves XRANGE's fields unparsed
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
        for key in sums:
            sums[key] += int(fields.get(key.encode(), 0))
    records = set()
    for key in client.scan_iter(match=prefix + "chunk:*", count=batch):
        suffix = key[len(prefix + "chunk:"):]
        try:
            records.add(int(suffix))
        except ValueError:
            problems.append(f"unexpected key {key[:80]!r}")
    try:
        evicted_now = int(client.hget(prefix + "meta", "evicted") or 0)
    except ValueError:
        evicted_now = meta["evicted"]
    # Evicted since the snapshot: their records may be gone; newer than it: not in the log yet.
    missing = sorted(g for g in logged - records if g > evicted_now)
    orphans = sorted(g for g in records - logged if g <= meta["gseq"])
    if missing:
        problems.append(f"{len(missing)} logged chunk(s) have no record (first: {missing[0]})")
    if orphans:
        problems.append(f"{len(orphans)} record(s) have no log entry and are never sampled "
                        f"(first: {orphans[0]})")
    live = set(range(meta["evicted"] + 1, meta["gseq"] + 1))
    if logged != live:
        problems.append(f"the log holds {len(logged)} entries; the counters say "
                        f"{len(live)} live chunks ({meta['evicted'] + 1}..{meta['gseq']})")
    for key, counter in (("n", "size_steps"), ("b", "size_bytes"), ("r", "raw_bytes")):
        if sums[key] != meta[counter]:
            problems.append(f"{counter} is {meta[counter]} but the log's entries sum to "
                            f"{sums[key]}")
    return {"namespace": spec.namespace, "consistent": not problems, "problems": problems,
            "chunks": len(logged), "records": len([g for g in records if g <= meta["gseq"]]),
            "meta": meta}
