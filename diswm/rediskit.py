"""Redis connections every role shares: retry through outages, fail fast on a wrong password."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry


class _RetryOutages(Retry):
    """Retries through outages (a Redis restart) but fails at once on a wrong password
    (redis-py's AuthenticationError is a ConnectionError, which it would otherwise retry)."""

    def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):
        def retryable(err: Exception) -> bool:
            if isinstance(err, redis.AuthenticationError):
                return False
            return is_retryable(err) if is_retryable else True

        return super().call_with_retry(do, fail, retryable, with_failure_count)


def connect(host: str, port: int, password: str, outage_window: float = 120.0) -> redis.Redis:
    """A client that retries (backoff up to 1 s apart) through outages up to about
    `outage_window` seconds, e.g. a Redis restart from its AOF, then raises ConnectionError.
    A Redis that accepts connections but does not answer (stopped, hung) costs each try its
    60 s socket timeout: operator commands use `probe` instead."""
    return redis.Redis(host=host, port=port, password=password or None,
                       socket_timeout=60, socket_connect_timeout=5,
                       retry=_RetryOutages(ExponentialBackoff(cap=1.0, base=0.05),
                                           int(outage_window) + 5),
                       retry_on_error=[redis.ConnectionError, redis.TimeoutError,
                                       redis.BusyLoadingError])


NOT_RESPONDING = "is not responding"


def probe(host: str, port: int, password: str, timeout: float = 2.0) -> redis.Redis:
    """A client for operator commands (status, checks): no retries, every command answered
    within `timeout` seconds or a TimeoutError, so a stopped or hung Redis is reported at once
    instead of blocking the command for minutes."""
    return redis.Redis(host=host, port=port, password=password or None,
                       socket_timeout=timeout, socket_connect_timeout=timeout,
                       retry=Retry(NoBackoff(), 0), retry_on_error=[])


def describe_failure(host: str, port: int, err: redis.RedisError, timeout: float) -> str:
    """One line for a probe's failure: not responding (it accepted the connection but did not
    answer within `timeout`) or unreachable (refused, wrong address, wrong password)."""
    if isinstance(err, redis.TimeoutError):
        return (f"redis at {host}:{port} {NOT_RESPONDING} (no answer within {timeout:g} s: "
                "stopped, hung or overloaded)")
    return f"redis at {host}:{port} is unreachable ({type(err).__name__}: {err})"
