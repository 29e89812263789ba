"""The run's control plane in Redis: shared counters, the colour scheme, the stop flag and the
errors that roles surface to `diswm run` / `cluster status`.

    control = RunControl(client, "myrun")
    control.add(env_steps=2, agent_steps=1)          # actors count globally
    control.set("scheme", "B")                       # the learner switches every env at once
    control.counters()["env_steps"]                  # ControlValueError names a corrupt field
    control.record_episode(env_steps=..., ...)       # actors: each finished training episode

Everything lives in one hash, ``diswm:<namespace>:control``. A value that is not what its field
holds (a counter set to text by hand, say) is reported with the key and field by name, never as
a bare ``ValueError`` deep inside a role.
"""

from __future__ import annotations

import time

import redis


class RunFailed(RuntimeError):
    """A run stopped because one of its roles failed for good (one line, for the CLI)."""


class ControlValueError(ValueError):
    """A control-plane field holds a value of the wrong kind."""


EPISODES_KEPT = 1_000_000  # training episodes a run's stream keeps (1M env steps: 1,000)


class RunControl:
    """A Redis hash of the run's shared state: counters, colour scheme, stop flag, errors."""

    COUNTERS = ("env_steps", "agent_steps", "episodes", "actor_restarts", "learner_restarts")

    def __init__(self, client: redis.Redis, namespace: str):
        self.client = client
        self.key = f"diswm:{namespace}:control"
        self.episodes_key = f"diswm:{namespace}:episodes"

    def _bad(self, field: str, raw: object) -> ControlValueError:
        shown = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        return ControlValueError(f"control value {self.key} field {field!r} is {str(shown)[:40]!r}, "
                                 "not an integer")

    def add(self, **counts: int) -> None:
        names = [name for name, value in counts.items() if value]
        if not names:
            return
        with self.client.pipeline(transaction=True) as pipe:
            for name in names:
                pipe.hincrby(self.key, name, int(counts[name]))
            results = pipe.execute(raise_on_error=False)
        for name, result in zip(names, results, strict=True):
            if isinstance(result, redis.ResponseError):
                raise self._bad(name, self.client.hget(self.key, name))

    def counters(self) -> dict[str, int]:
        raw = self.client.hmget(self.key, list(self.COUNTERS))
        out = {}
        for name, value in zip(self.COUNTERS, raw, strict=True):
            try:
                out[name] = int(value) if value is not None else 0
            except ValueError:
                raise self._bad(name, value) from None
        return out

    def get(self, field: str, default: str = "") -> str:
        raw = self.client.hget(self.key, field)
        return raw.decode(errors="replace") if raw is not None else default

    def set(self, field: str, value: str) -> None:
        self.client.hset(self.key, field, value)

    def snapshot(self) -> dict[str, str]:
        return {k.decode(errors="replace"): v.decode(errors="replace")
                for k, v in self.client.hgetall(self.key).items()}

    # -- training episodes ---------------------------------------------------------------------
    def record_episode(self, **fields: object) -> None:
        """Append one finished training episode (env_steps, return, length, policy_version,
        actor, scheme) to the run's stream ``diswm:<namespace>:episodes``: DreamerV2's published
        scores are these episodes, played by the exploring policy, not evaluation episodes."""
        self.client.xadd(self.episodes_key, {k: str(v) for k, v in fields.items()},
                         maxlen=EPISODES_KEPT, approximate=True)

    def episodes(self, after: str = "0-0", count: int = 10_000) -> list[tuple[str, dict]]:
        """Training episodes recorded after stream id `after`, oldest first: (id, fields)."""
        out = []
        for entry_id, fields in self.client.xrange(self.episodes_key, f"({after}", "+",
                                                   count=count):
            out.append((entry_id.decode(), {k.decode(): v.decode() for k, v in fields.items()}))
        return out

    # -- errors surfaced to operators --------------------------------------------------------
    def report_error(self, role: str, message: str) -> None:
        """Record `role`'s error (one line, stamped with when) for `cluster status` and
        `diswm run`."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        self.client.hset(self.key, f"error:{role}",
                         f"[since {stamp}] " + " ".join(message.split())[:500])

    def clear_error(self, role: str) -> None:
        self.client.hdel(self.key, f"error:{role}")

    def errors(self) -> dict[str, str]:
        return {k[len("error:"):]: v for k, v in self.snapshot().items() if k.startswith("error:")}


class NamespaceHeld(RuntimeError):
    """Another live run publishes into this replay namespace."""


_REFRESH_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class NamespaceLease:
    """One live run per replay namespace: the learner holds ``diswm:<ns>:owner`` (its run
    folder) with a time to live it refreshes while it runs, so a second run that would publish
    weights and counters into the same namespace is refused at start, and the namespace frees
    itself `ttl` seconds after its run dies. The same run folder (a learner Ray restarted, a
    resumed run) takes its own lease back."""

    def __init__(self, client: redis.Redis, namespace: str, owner: str, ttl: float = 30.0):
        self.client, self.namespace, self.owner = client, namespace, owner
        self.key = f"diswm:{namespace}:owner"
        self.ttl_ms = int(ttl * 1000)
        self._refresh = client.register_script(_REFRESH_LUA)
        self._release = client.register_script(_RELEASE_LUA)

    def holder(self) -> str | None:
        raw = self.client.get(self.key)
        return raw.decode(errors="replace") if raw is not None else None

    def acquire(self) -> None:
        if self.client.set(self.key, self.owner, nx=True, px=self.ttl_ms):
            return
        if self.refresh():
            return
        holder = self.holder()
        raise NamespaceHeld(
            f"replay namespace {self.namespace!r} is in use by a live run ({holder}); stop that "
            "run first, or give this one its own namespace: --set replay.namespace=NAME")

    def refresh(self) -> bool:
        """Extend the lease; False if another run holds it now."""
        return bool(self._refresh(keys=[self.key], args=[self.owner, self.ttl_ms]))

    def keep(self) -> None:
        """Refresh, or take the lease again if it lapsed (e.g. Redis restarted without it)."""
        if not self.refresh():
            self.acquire()

    def release(self) -> None:
        self._release(keys=[self.key], args=[self.owner])
