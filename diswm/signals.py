"""SIGTERM stops a command the way Ctrl-C does.

systemd, `timeout`, `kill` and batch schedulers stop a process with SIGTERM. Python's default
ends the process at once (no cleanup), and `ray.init` replaces the handler with one that calls
`sys.exit` from wherever the driver happens to be, which aborted `diswm run` mid-teardown and
left its Redis running. Here SIGTERM raises `KeyboardInterrupt` instead, so every `finally`
runs (actors flush, the learner checkpoints, Ray and Redis stop), and the CLI then prints one
line and exits with 143 (128 + SIGTERM).

    stop_on_sigterm()        # once at start (the CLI's main)
    ray_init(**kwargs)       # instead of ray.init: puts the handler back after Ray's

A second SIGTERM while stopping is ignored, so it cannot cut the cleanup short; SIGKILL still
ends everything (the run's Redis then stops itself: replay_service/supervisor.py).
"""

from __future__ import annotations

import signal
import sys
import threading

_received = False
_stop_requested = False  # request_stop(): the main thread asks threads running jobs to stop
_default_unraisable = sys.unraisablehook


def _on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    global _received
    if _received:
        return  # already stopping
    _received = True
    raise KeyboardInterrupt("SIGTERM")


def _unraisable(info) -> None:
    """An interrupt raised where Python cannot propagate it (inside a ctypes callback, such as
    MuJoCo's warning hook) is printed as "Exception ignored" with a traceback; for a SIGTERM's
    it is not printed, since `check()` raises it again where it can propagate."""
    if _received and info.exc_type is KeyboardInterrupt:
        return
    _default_unraisable(info)


def stop_on_sigterm() -> None:
    """SIGTERM raises KeyboardInterrupt in the main thread (a no-op off the main thread)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        sys.unraisablehook = _unraisable


def terminated() -> bool:
    """Whether a SIGTERM arrived. Ray turns a KeyboardInterrupt raised inside `ray.get` into a
    fresh one, so the exception alone does not say which signal it was."""
    return _received


def check() -> None:
    """Raise KeyboardInterrupt if a SIGTERM arrived or a stop was requested. Long loops call it:
    Ray swallows a KeyboardInterrupt raised while some of its calls run (actor creation, for
    one), and a signal never reaches threads other than the main one."""
    if _received or _stop_requested:
        raise KeyboardInterrupt("SIGTERM" if _received else "stop requested")


def request_stop() -> None:
    """Make `check()` raise in every thread (the main thread, interrupted, stopping the jobs
    its threads run: `diswm experiment --parallel`)."""
    global _stop_requested
    _stop_requested = True


def ray_init(**kwargs):
    """`ray.init`, then this module's SIGTERM handler again (Ray installs its own)."""
    import ray

    context = ray.init(**kwargs)
    stop_on_sigterm()
    return context
