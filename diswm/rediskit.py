"""Redis connections every role shares: retry through outages, fail fast on a wrong password."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
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
    `outage_window` seconds, e.g. a Redis restart from its AOF, then raises ConnectionError."""
    return redis.Redis(host=host, port=port, password=password or None,
                       socket_timeout=60, socket_connect_timeout=5,
                       retry=_RetryOutages(ExponentialBackoff(cap=1.0, base=0.05),
                                           int(outage_window) + 5),
                       retry_on_error=[redis.ConnectionError, redis.TimeoutError,
                                       redis.BusyLoadingError])
