"""Stride-2 convolutions for the CPU: the same layers, computed in the way oneDNN is fast at.

Measured on this 2-core CPU (bf16 autocast, channels-last, 512 frames of 64 x 64, forward and
backward, compiled): oneDNN's transposed convolution and its convolution backward are 2-5x
slower than its forward convolution of the same FLOPs, and its bias gradient alone costs as
much as the weight gradient (a sum over N, H, W). So, on the CPU, `Conv2d` and `ConvTranspose2d`
here compute the same functions by other routes:

- a stride-2 transposed convolution is one stride-1 convolution whose output channels are the
  4 output phases (sub-pixel convolution; Shi et al. 2016), interleaved back into place: for an
  output row ``2m + a`` only the taps ``a, a + 2, a + 4, ...`` of the kernel meet input rows;
- the gradient of a stride-2 convolution's input is that transposed convolution (the adjoint),
  computed the same way; the gradient of a transposed convolution's input is a forward
  stride-2 convolution;
- weight gradients stay oneDNN's (requested alone); bias gradients are plain sums;
- a transposed convolution of a 1 x 1 map (the decoders' first layer) is a matrix product.

Parameters, initialisation and state dicts are `torch.nn`'s: the classes subclass
`nn.Conv2d` / `nn.ConvTranspose2d` and only replace `forward`, on CPU tensors, for the
configurations above (stride 2, no dilation, no groups, no output padding); anything else, and
every CUDA tensor, takes the `torch.nn` path. `tests/test_fastconv.py` checks outputs and all
three gradients against `torch.nn` in float64, under bf16 autocast and compiled.

Under autocast the compute dtype is autocast's (as for `F.conv2d`): inputs and weights are cast
once, the cast copies are what is saved for the backward, and gradients come back in the
dtypes of the original tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_conv_backward = torch.ops.aten.convolution_backward


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype


def _bias_grad(grad: Tensor, dtype: torch.dtype) -> Tensor:
    """A bias's gradient: the sum over batch and pixels, accumulated in float32 at least."""
    return grad.sum((0, 2, 3), dtype=torch.promote_types(grad.dtype, torch.float32)).to(dtype)


def conv_transpose2d_phases(x: Tensor, weight: Tensor, padding: int,
                            out_hw: tuple[int, int], bias: Tensor | None = None) -> Tensor:
    """`F.conv_transpose2d(x, weight, bias, stride=2, padding=padding)` as one stride-1
    convolution over the 4 output phases, interleaved and cropped to `out_hw` (zero-padded at
    the bottom/right where `out_hw` asks for rows no input reaches, which happens only for the
    bias-free input gradients: output padding)."""
    cin, cout, k, _ = weight.shape
    taps = (k + 1) // 2
    # Kernel tap 2j + a -> (j, a); taps beyond k are zeros. Flip j: convolution -> correlation.
    w = F.pad(weight, (0, 2 * taps - k, 0, 2 * taps - k))
    w = w.reshape(cin, cout, taps, 2, taps, 2).flip(2, 4)
    w = w.permute(3, 5, 1, 0, 2, 4).reshape(4 * cout, cin, taps, taps)  # channels (a, b, cout)
    y = F.conv2d(x, w, None if bias is None else bias.repeat(4), padding=taps - 1)
    n, _, hp, wp = y.shape
    # Interleave the phases through the NHWC view: channels-last in, channels-last out.
    y = y.permute(0, 2, 3, 1).reshape(n, hp, wp, 2, 2, cout).permute(0, 1, 3, 2, 4, 5)
    y = y.reshape(n, 2 * hp, 2 * wp, cout)
    ho, wo = out_hw
    y = y[:, padding:padding + ho, padding:padding + wo]
    if y.shape[1] < ho or y.shape[2] < wo:
        y = F.pad(y, (0, 0, 0, wo - y.shape[2], 0, ho - y.shape[1]))
    return y.permute(0, 3, 1, 2)


class _Stride2Conv(torch.autograd.Function):
    """A stride-2 convolution (`transposed=False`: oneDNN forward, input gradient by the phases
    transposed conv) or transposed convolution (`transposed=True`: phases forward, input
    gradient by a stride-2 conv). Weight gradients are oneDNN's, requested alone."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, padding: int,
                transposed: bool) -> Tensor:
        dtype = _compute_dtype(x)
        xc, wc = x.to(dtype), weight.to(dtype)
        bc = None if bias is None else bias.to(dtype)
        with torch.autocast("cpu", enabled=False):
            if transposed:
                k = weight.shape[-1]
                out_hw = tuple((n - 1) * 2 - 2 * padding + k for n in x.shape[-2:])
                y = conv_transpose2d_phases(xc, wc, padding, out_hw, bc)
            else:
                y = F.conv2d(xc, wc, bc, stride=2, padding=padding)
        ctx.save_for_backward(xc, wc)
        ctx.padding, ctx.transposed, ctx.has_bias = padding, transposed, bias is not None
        ctx.x_dtype, ctx.w_dtype = x.dtype, weight.dtype
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        xc, wc = ctx.saved_tensors
        p = ctx.padding
        grad = grad.to(xc.dtype)
        gx = gw = gb = None
        with torch.autocast("cpu", enabled=False):
            if ctx.needs_input_grad[0]:
                gx = (F.conv2d(grad, wc, None, stride=2, padding=p) if ctx.transposed
                      else conv_transpose2d_phases(grad, wc, p, tuple(xc.shape[-2:])))
                gx = gx.to(ctx.x_dtype)
            if ctx.needs_input_grad[1]:
                gw = _conv_backward(grad, xc, wc, None, [2, 2], [p, p], [1, 1], ctx.transposed,
                                    [0, 0], 1, [False, True, False])[1].to(ctx.w_dtype)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                gb = _bias_grad(grad, ctx.w_dtype)
        return gx, gw, gb, None, None


def _plain_stride2(m: nn.Conv2d | nn.ConvTranspose2d) -> bool:
    k = m.kernel_size
    return (m.stride == (2, 2) and m.dilation == (1, 1) and m.groups == 1
            and k[0] == k[1] and m.padding[0] == m.padding[1] and m.padding_mode == "zeros"
            and (not m.transposed or m.output_padding == (0, 0)))


class Conv2d(nn.Conv2d):
    """`nn.Conv2d` whose stride-2 backward avoids oneDNN's slow paths on the CPU (module doc).
    `fast = False` restores `torch.nn`'s computation."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fast = True
        self._fast_shape = _plain_stride2(self)

    def forward(self, x: Tensor) -> Tensor:
        if self.fast and self._fast_shape and x.device.type == "cpu" and x.dim() == 4:
            return _Stride2Conv.apply(x, self.weight, self.bias, self.padding[0], False)
        return super().forward(x)


class ConvTranspose2d(nn.ConvTranspose2d):
    """`nn.ConvTranspose2d` computed as a stride-1 convolution over the output phases (stride
    2) or a matrix product (a 1 x 1 input map) on the CPU (module doc). `fast = False` restores
    `torch.nn`'s computation."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fast = True
        self._fast_shape = _plain_stride2(self)
        self._matmul_shape = (self.padding == (0, 0) and self.output_padding == (0, 0)
                              and self.dilation == (1, 1) and self.groups == 1)

    def forward(self, x: Tensor, output_size=None) -> Tensor:
        if (self.fast and output_size is None and x.device.type == "cpu" and x.dim() == 4):
            if self._matmul_shape and x.shape[-2:] == (1, 1):
                return self._from_point(x)
            if self._fast_shape:
                return _Stride2Conv.apply(x, self.weight, self.bias, self.padding[0], True)
        return super().forward(x, output_size)

    def _from_point(self, x: Tensor) -> Tensor:
        """A 1 x 1 map: out[n, c, i, j] = sum_ci x[n, ci] w[ci, c, i, j] + b[c], one matmul
        whose (i, j, c) output order is the channels-last layout."""
        cin, cout, kh, kw = self.weight.shape
        w = self.weight.permute(2, 3, 1, 0).reshape(kh * kw * cout, cin)
        b = None if self.bias is None else self.bias.repeat(kh * kw)
        y = F.linear(x.reshape(x.shape[0], cin), w, b)
        return y.view(x.shape[0], kh, kw, cout).permute(0, 3, 1, 2)


def set_fast(module: nn.Module, enabled: bool) -> None:
    """Switch every fast conv layer under `module` on or off (`train.fast_convs`)."""
    for m in module.modules():
        if isinstance(m, (Conv2d, ConvTranspose2d)):
            m.fast = enabled
