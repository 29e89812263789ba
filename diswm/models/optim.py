"""The learner's Adam: PyTorch's, or the TF/Keras form that DreamerV2's published runs used.

`optim.adam_eps`:

    torch   PyTorch's Adam: theta -= lr * m_hat / (sqrt(v_hat) + eps)
    keras   TF/Keras Adam (danijar/dreamerv2's optimizer), whose eps is "epsilon hat", added to
            the *uncorrected* sqrt(v):
                lr_t  = lr * sqrt(1 - beta2^t) / (1 - beta1^t)
                theta -= lr_t * m / (sqrt(v) + eps)
            which is PyTorch's rule with eps_t = eps / sqrt(1 - beta2^t): about 3.2e-4 at the
            first step for eps = 1e-5, 3.2e-5 at step 100, 1.3e-5 at step 1,000, -> eps.

`optim.weight_decay` is DreamerV2's decoupled decay: every step, before the Adam update, each
parameter is multiplied by (1 - weight_decay), not scaled by the learning rate (its
`tfutils.Optimizer._apply_weight_decay`).

Both are PyTorch's own Adam underneath (fused on CUDA); the Keras form only sets each group's
eps for the coming step, so `tests/test_optim.py` holds it to a NumPy transcription of TF's
update rule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

ADAM_EPS = ("torch", "keras")


class Adam(torch.optim.Adam):
    """`torch.optim.Adam` with DreamerV2's decoupled weight decay and, with ``eps_form="keras"``,
    TF/Keras's epsilon hat. Its state dict is Adam's, plus each group's ``base_eps``,
    ``eps_form``, ``decay`` and ``keras_step`` (so a restored optimizer continues exactly)."""

    def __init__(self, params: Iterable[Tensor], lr: float, eps: float, *,
                 eps_form: str = "torch", weight_decay: float = 0.0, fused: bool = False):
        if eps_form not in ADAM_EPS:
            raise ValueError(f"eps_form must be one of {ADAM_EPS}, got {eps_form!r}")
        if not 0.0 <= weight_decay < 1.0:
            raise ValueError(f"weight_decay must be in [0, 1), got {weight_decay}")
        super().__init__(params, lr=lr, eps=eps, fused=fused or None)
        for group in self.param_groups:
            group.update(base_eps=float(eps), eps_form=eps_form, decay=float(weight_decay),
                         keras_step=0)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if group["decay"]:
                params = [p for p in group["params"] if p.grad is not None]
                if params:
                    torch._foreach_mul_(params, 1.0 - group["decay"])
            if group["eps_form"] == "keras":
                group["keras_step"] += 1
                beta2 = group["betas"][1]
                group["eps"] = group["base_eps"] / math.sqrt(1.0 - beta2 ** group["keras_step"])
        return super().step(closure)


def keras_eps(eps: float, step: int, beta2: float = 0.999) -> float:
    """PyTorch's equivalent eps at (1-based) `step` of TF/Keras Adam with epsilon `eps`."""
    return eps / math.sqrt(1.0 - beta2 ** step)
