"""Mixed precision for the learner and pretraining: which dtype the matmuls and convolutions use.

    prec = resolve_precision(cfg.train.precision, device)   # "auto" picks by the hardware
    print(prec.describe())                                  # one line, said at start
    with prec.autocast():
        loss = model.loss(batch)                            # matmuls/convs in bf16 or fp16
    prec.step(opt, loss, params, grad_clip)                 # grad scaler under fp16

What stays in float32 whatever the setting (the models cast at these boundaries): the weights and
the optimizer state, every distribution's parameters (Gaussian latents, the truncated-normal
actor, the beta-VAE's z), sampling, log-probs and entropies, every KL, the lambda-returns, the
reward/value/image heads' outputs and every loss. Under `torch.autocast` only the ops on its
lower-precision list (linear, matmul, conv, conv-transpose) run in the low dtype; the models pass
their outputs through `fp32()` before any of the above.

`auto` resolves to bf16 where the hardware computes it natively (a CUDA card with bf16 support,
compute capability 8.0 and later; a CPU with AVX512-BF16 or AMX) and to fp32 elsewhere. fp16
needs CUDA and uses a dynamic loss scaler per optimizer (fp16's range is too small for Dreamer's
gradients without one); bf16 has fp32's range and needs none.
"""

from __future__ import annotations

import contextlib
import typing
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

CHOICES = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """(whether `device` computes bf16 natively, what was found), for `auto` and the bench."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        name = torch.cuda.get_device_name(index)
        ok = major >= 8 and torch.cuda.is_bf16_supported()
        return ok, f"{name} (compute capability {major}.{minor})"
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        avx512_bf16 = bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())
        amx = bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)())
        found = [n for n, f in (("AVX512-BF16", avx512_bf16), ("AMX", amx)) if f]
        return bool(found), ("CPU with " + " and ".join(found)) if found else \
            "CPU without AVX512-BF16 or AMX"
    return False, f"{device.type} device"


@dataclass(frozen=True)
class Precision:
    """A resolved precision setting for one device."""

    name: str  # fp32 | bf16 | fp16
    device: torch.device
    requested: str  # what the config asked for (auto, or the same as name)
    reason: str = ""  # why auto chose `name`

    @property
    def dtype(self) -> torch.dtype | None:
        """The low-precision compute dtype, or None for plain float32."""
        return _DTYPES[self.name]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Matmuls and convolutions in `dtype` inside the block (a no-op for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def make_scaler(self, init_scale: float = 2.0 ** 16) -> torch.amp.GradScaler | None:
        """A dynamic loss scaler for fp16 (one per optimizer); None otherwise.

        `init_scale`: the scaler's first scale (PyTorch's default 2**16 suits losses of order 1;
        a loss of order 1e4, like the world model's pixel-summed image NLL, overflows fp16's
        gradients at any scale above ~100 and would skip its first ~16 updates)."""
        if self.name != "fp16":
            return None
        return torch.amp.GradScaler(self.device.type, init_scale=init_scale)

    def describe(self) -> str:
        how = f"train.precision={self.requested}"
        if self.requested == "auto":
            how += f" -> {self.name} ({self.reason})"
        detail = ("float32 throughout" if self.dtype is None else
                  f"matmuls/convs in {self.name}; weights, optimizer state, distributions, KLs, "
                  "returns and losses in float32")
        return f"precision: {how} on {self.device.type}: {detail}"


def resolve_precision(name: str, device: str | torch.device) -> Precision:
    """`train.precision` -> a `Precision` for `device`; a setting the device cannot run fails
    with a message that names it."""
    device = torch.device(device)
    if name not in CHOICES:
        raise ValueError(f"train.precision: {name!r} is not one of {', '.join(CHOICES)}")
    if name == "auto":
        ok, found = native_bf16(device)
        return Precision("bf16" if ok else "fp32", device, "auto",
                         f"native bf16 on {found}" if ok else f"no native bf16 on {found}")
    if name == "fp16" and device.type != "cuda":
        raise ValueError(f"train.precision=fp16 needs a CUDA device (the learner runs on "
                         f"{device.type}); use bf16 or fp32 there")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("train.precision=bf16: this CUDA device has no bf16 support; "
                         "use fp16 or fp32")
    return Precision(name, device, name)


def fp32(x: Tensor) -> Tensor:
    """`x` as float32 (a no-op when it already is): the boundary into distributions and losses."""
    return x if x.dtype == torch.float32 else x.float()


class Group(typing.NamedTuple):
    """One optimizer's share of a backward pass: its loss, parameters and (fp16) scaler."""

    opt: torch.optim.Optimizer
    loss: Tensor
    params: list[nn.Parameter]
    scaler: torch.amp.GradScaler | None = None


def backward_and_step(groups: Mapping[str, Group], grad_clip: float) -> dict[str, Tensor]:
    """One backward pass over the sum of the groups' losses, then per group: clip the global norm
    of its gradients at `grad_clip` and step its optimizer. Returns each group's gradient norm
    (before clipping, unscaled) as a tensor, so a caller on a GPU can fetch every metric in one
    copy.

    Summing is exact only when each loss reaches its own group's parameters and no other's (the
    actor and critic losses: the critic sees detached features and targets, the actor's returns
    use the frozen slow critic); a test checks the gradients against separate backward passes.
    One pass also lets a compiled region that produces both losses run its backward once.
    """
    norms = _backward_and_clip(groups, grad_clip)
    _step(groups)
    return norms


def step_if_finite(groups: Mapping[str, Group],
                   grad_clip: float) -> tuple[dict[str, Tensor], bool]:
    """`backward_and_step`, except that no group steps when any group's loss, or the gradient
    norm of a group without a grad scaler, is NaN or inf: the weights and optimizer states stay
    exactly as they were (one bad batch must not make every weight NaN). Returns (norms,
    stepped). Under fp16 an overflow of the scaled gradients is the scaler's to skip, as
    before. Reading the verdict synchronises a GPU once per call."""
    norms = _backward_and_clip(groups, grad_clip)
    checks = [g.loss.detach().float().reshape(()) for g in groups.values()]
    checks += [norms[name].float().reshape(()) for name, g in groups.items() if g.scaler is None]
    if not bool(torch.isfinite(torch.stack(checks)).all()):
        for g in groups.values():
            g.opt.zero_grad(set_to_none=True)
            if g.scaler is not None:
                g.scaler.update()  # close this iteration's unscale_ (no step was taken)
        return norms, False
    _step(groups)
    return norms, True


def _backward_and_clip(groups: Mapping[str, Group], grad_clip: float) -> dict[str, Tensor]:
    for g in groups.values():
        g.opt.zero_grad(set_to_none=True)
    total = sum(g.loss if g.scaler is None else g.scaler.scale(g.loss) for g in groups.values())
    total.backward()
    norms = {}
    for name, g in groups.items():
        if g.scaler is not None:
            g.scaler.unscale_(g.opt)
        params = [p for p in g.params if p.grad is not None]
        norms[name] = torch.nn.utils.clip_grad_norm_(params, grad_clip).detach()
    return norms


def _step(groups: Mapping[str, Group]) -> None:
    for g in groups.values():
        if g.scaler is None:
            g.opt.step()
        else:
            g.scaler.step(g.opt)  # skipped when the scaled gradients overflowed
            g.scaler.update()
