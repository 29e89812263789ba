"""Helpers the tests share (fixtures live in conftest.py): polling with a deadline.

    from support import poll_until, wait_for
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(check: Callable[[], T], timeout: float, every: float = 0.1) -> T:
    """Call `check` until it returns something truthy or `timeout` seconds pass; returns its
    last value (falsy when the time ran out). Polling with a deadline, not a sleep as a wait."""
    deadline = time.monotonic() + timeout
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(every)
    return value if value else check()


def wait_for(what: str, check: Callable[[], T], timeout: float = 120.0,
             every: float = 0.1) -> T:
    """`poll_until`, failing the test with `what` in the message when the time runs out."""
    value = poll_until(check, timeout, every)
    if not value:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
    return value
