"""Bounded restarts with backoff for the roles Ray restarts after a crash (actors, learner).

A role that crashes records the cause in the run's crash ledger (a Redis hash) and exits; Ray
restarts it. The restarted role reads the ledger first: after `limit` consecutive crashes of the
same cause within `window` seconds it does not start its loop again but stays up, idle, with the
error surfaced on the control plane (``error:<role>``, shown by `cluster status` and `diswm run`);
before that it waits a backoff that doubles with every crash of that cause (1, 2, 4 ... 60 s).
A role that has run cleanly for `healthy_after` seconds clears its entry.

    ledger = CrashLedger(client, namespace, "actor-3")
    count, cause = ledger.recent()
    if count >= ledger.limit: ...stay idle, surfaced...
    time.sleep(ledger.backoff(count))
    ...
    except Exception:
        ledger.record(traceback.format_exc()); os._exit(1)
"""

from __future__ import annotations

import json
import re
import time

import redis


def cause_of(error_text: str) -> str:
    """The exception line of a traceback (or the text), with numbers masked, so that the same
    failure with a different count or port reads as the same cause."""
    lines = [ln.strip() for ln in error_text.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else "unknown error"
    return re.sub(r"\d+", "#", last)[:300]


def one_line(error_text: str) -> str:
    lines = [ln.strip() for ln in error_text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "unknown error")[:500]


class CrashLedger:
    def __init__(self, client: redis.Redis, namespace: str, role: str, *, limit: int = 5,
                 window: float = 600.0, healthy_after: float = 120.0):
        self.client, self.role = client, role
        self.key = f"diswm:{namespace}:crashes"
        self.limit, self.window, self.healthy_after = limit, window, healthy_after

    def _entry(self) -> dict:
        raw = self.client.hget(self.key, self.role)
        try:
            entry = json.loads(raw) if raw else {}
            return entry if isinstance(entry, dict) else {}
        except ValueError:
            return {}

    def recent(self) -> tuple[int, str]:
        """(consecutive crashes of the latest cause within the window, its last message)."""
        entry = self._entry()
        if not entry or time.time() - float(entry.get("last", 0)) > self.window:
            return 0, ""
        return int(entry.get("count", 0)), str(entry.get("message", ""))

    def record(self, error_text: str) -> int:
        """Count this crash; returns the consecutive count of its cause."""
        cause, now = cause_of(error_text), time.time()
        entry = self._entry()
        same = entry.get("cause") == cause and now - float(entry.get("last", 0)) <= self.window
        count = int(entry.get("count", 0)) + 1 if same else 1
        self.client.hset(self.key, self.role, json.dumps(
            {"cause": cause, "message": one_line(error_text), "count": count, "last": now}))
        return count

    def clear(self) -> None:
        self.client.hdel(self.key, self.role)

    def backoff(self, count: int) -> float:
        return 0.0 if count <= 0 else float(min(2 ** (count - 1), 60))

    def exhausted(self, count: int) -> bool:
        return count >= self.limit


def ray_node_id() -> str | None:
    """The Ray node this process runs on (a role's status names it), or None outside Ray."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray there is no node
        return None
