"""CPU priority of the work that should yield to a CPU learner (`runtime.background_priority`).

A CPU learner runs each operator on all of its torch threads, and each thread waits for the
slowest at the end of it. When an actor's env step takes one of those cores for a few
milliseconds, the other learner thread spins at the barrier and the whole update waits, though
the actors need only a tenth of a core. At Linux's SCHED_IDLE the actors' env loops run only on a
core that nothing else wants, which the learner leaves free between its operators and whenever it
waits for data (docs/bench/README.md, "Learner": medians 0.474 -> 0.418 s per update in a 2-actor `cpu` run
on 2 cores). The evaluation actor is not lowered: at SCHED_IDLE its evaluations took 62-101 s
instead of 5-10 s in `make run`. On a GPU learner or an actor-only node with idle cores,
SCHED_IDLE changes nothing.

Linux schedules threads: `lower` changes the calling thread only, and the threads it starts later
inherit it. Call it at the top of the thread that does the work.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

PRIORITIES = ("idle", "low", "normal")


def lower(priority: str) -> str:
    """Give the calling thread `priority`: ``idle`` (SCHED_IDLE), ``low`` (niceness 19) or
    ``normal`` (left as it is). Returns what was applied: ``idle`` falls back to ``low`` where
    the system refuses it, and ``low`` to ``normal``."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority {priority!r} is not one of {', '.join(PRIORITIES)}")
    if priority == "idle":
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "idle"
        except (AttributeError, OSError) as err:
            log.info("SCHED_IDLE refused (%s); using niceness 19", err)
            priority = "low"
    if priority == "low":
        try:
            # On Linux, PRIO_PROCESS with 0 names the calling thread; raising one's own
            # niceness needs no privileges.
            os.setpriority(os.PRIO_PROCESS, 0, 19)
            return "low"
        except (AttributeError, OSError) as err:
            log.info("niceness 19 refused (%s); priority left as it is", err)
    return "normal"

