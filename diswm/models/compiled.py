"""`torch.compile` for the learner's hot paths, with a clean fallback and its time kept apart.

    wm_loss = Compiled(world_model.loss, "world model loss", log=print)
    losses, aux = wm_loss(batch, z_teacher_BTZ=z)      # compiled on the first call
    wm_loss.compile_seconds                              # that first call (forward and backward
                                                         # lowered), reported apart

What gets compiled (learner/learner.py): the world-model loss (encoder, the RSSM's observe loop
over the batch's T steps, decoder, every loss term) and the actor-critic loss (the H-step
imagination rollout, reward/value heads, lambda-returns, actor and critic losses). Compiling whole
regions rather than single modules lets inductor fuse the elementwise work between the matmuls
and convolutions (ELUs, casts, gates, the truncated normal's sampling, the KLs) and unroll the
per-time-step loops; its backward is compiled with it (AOTAutograd), during the first call.

A region that fails to compile (no C++ compiler, an unsupported op, a backend error) is run
eagerly from then on, said once in one line; an error that is not the compiler's raises again in
eager mode, with its own message. Compiled code is cached on disk by inductor
(``TORCHINDUCTOR_CACHE_DIR``, by default under /tmp), so a restarted learner compiles faster.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import torch
from torch._functorch import config as functorch_config


class Compiled:
    """`fn` compiled with `torch.compile(dynamic=False)` on first use, eager if that fails."""

    def __init__(self, fn: Callable, name: str, *, log: Callable[[str], None] | None = None,
                 enabled: bool = True, backend: str | Callable = "inductor",
                 mode: str | None = None, options: dict[str, Any] | None = None):
        self.fn, self.name, self.log = fn, name, log or (lambda msg: None)
        mode = None if mode in (None, "default") or backend != "inductor" else mode
        # `options`: inductor settings for this region only (torch.compile's `options`).
        options = options if backend == "inductor" and options else None
        if mode and options:
            raise ValueError(f"{name}: torch.compile takes a mode or options, not both")
        self._compiled = (torch.compile(fn, dynamic=False, backend=backend, mode=mode,
                                        options=options) if enabled else None)
        self.state = "pending" if enabled else "eager"  # pending -> compiled | fallback
        self.compile_seconds = 0.0  # the first compiled call (tracing + codegen + run)
        self.error = ""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.state == "compiled":
            return self._compiled(*args, **kwargs)
        if self.state != "pending":
            return self.fn(*args, **kwargs)
        start = time.perf_counter()
        try:
            # Lower the backward now too, so that a compiler failure surfaces here (where it can
            # fall back) and not in the middle of an optimizer step.
            with _eager_backward_lowering():
                out = self._compiled(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any compiler failure falls back to eager
            self.state, self.error = "fallback", _one_line(err)
            self.log(f"compile: {self.name} runs eagerly; torch.compile failed ({self.error})")
            return self.fn(*args, **kwargs)
        self.state, self.compile_seconds = "compiled", time.perf_counter() - start
        lowered = " (forward and backward)" if torch.is_grad_enabled() else ""
        self.log(f"compile: {self.name} compiled in {self.compile_seconds:.1f} s{lowered}")
        return out


def _eager_backward_lowering():
    """functorch's switch that lowers the backward with the forward (absent from older torch)."""
    if hasattr(functorch_config, "force_non_lazy_backward_lowering"):
        return functorch_config.patch(force_non_lazy_backward_lowering=True)
    return contextlib.nullcontext()


def _one_line(err: BaseException) -> str:
    """The error on one line; dynamo wraps a backend's error as "backend=... raised:" with the
    cause on the next line, so a message ending in ':' takes its next line too."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = f"{type(err).__name__}: " + " ".join(lines[:2] if lines and lines[0].endswith(":")
                                                 else lines[:1])
    return text[:300]


def compiler_available() -> tuple[bool, str]:
    """Whether inductor can build CPU kernels here (it needs a C++ compiler), and why not."""
    import shutil

    from torch._inductor import config as inductor_config

    cxx = inductor_config.cpp.cxx
    names = [c for c in (cxx if isinstance(cxx, tuple) else (cxx,)) if c]
    for name in names:
        if shutil.which(name):
            return True, name
    return False, f"no C++ compiler found (looked for {', '.join(names) or 'g++'})"
