"""diswm/priority.py: the CPU priority of work that yields to a CPU learner, per thread, read back
from the kernel."""

from __future__ import annotations

import os
import threading

import pytest

from diswm import priority


def _in_a_thread(level: str) -> tuple[str, int, int]:
    out: dict = {}

    def body() -> None:
        out["applied"] = priority.lower(level)
        out["policy"] = os.sched_getscheduler(0)
        out["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
    t = threading.Thread(target=body)
    t.start()
    t.join(timeout=30)
    return out["applied"], out["policy"], out["nice"]


def test_idle_and_low_change_the_calling_thread_only():
    base = os.getpriority(os.PRIO_PROCESS, 0)  # a new thread starts with its creator's niceness
    applied, policy, _ = _in_a_thread("idle")
    assert applied == "idle" and policy == os.SCHED_IDLE
    applied, policy, nice = _in_a_thread("low")
    assert applied == "low" and policy == os.SCHED_OTHER and nice == 19
    applied, policy, nice = _in_a_thread("normal")
    assert applied == "normal" and policy == os.SCHED_OTHER and nice == base
    # the test's own thread is untouched
    assert os.sched_getscheduler(0) == os.SCHED_OTHER and os.getpriority(os.PRIO_PROCESS, 0) == base


def test_an_unknown_priority_is_named():
    with pytest.raises(ValueError, match="'high'"):
        priority.lower("high")
