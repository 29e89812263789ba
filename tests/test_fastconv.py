"""The CPU's fast stride-2 convolutions (diswm/models/fastconv.py) compute torch.nn's functions.

Each layer shape the encoders and decoders use is checked against `torch.nn` on the same module
(`fast = False`): output and the three gradients in float64 (where only the summation order
differs), under bf16 autocast (dtypes as autocast gives them, values within bf16 rounding),
compiled, and for a whole learner update (every loss term and gradient norm as with torch.nn).
"""

from __future__ import annotations

import pytest
import torch
from test_learner import A, make_batch

from diswm.models import fastconv
from diswm.models.nets import BetaVAEEncoder, ConvDecoder, ConvEncoder, ImageDecoder
from diswm.presets import load_config
from learner import Learner

# (transposed, in channels, out channels, kernel, stride, padding, input size): every conv of
# the four nets at depth 16 (debug) on 64 x 64 frames.
LAYERS = [
    (False, 3, 16, 4, 2, 1, 64), (False, 16, 16, 4, 2, 1, 32), (False, 16, 32, 4, 2, 1, 16),
    (False, 32, 32, 4, 2, 1, 8), (False, 32, 128, 4, 1, 0, 4),             # beta-VAE encoder
    (True, 128, 32, 4, 1, 0, 1), (True, 32, 32, 4, 2, 1, 4), (True, 32, 16, 4, 2, 1, 8),
    (True, 16, 16, 4, 2, 1, 16), (True, 16, 3, 4, 2, 1, 32),                # its decoder
    (False, 3, 16, 4, 2, 0, 64), (False, 16, 32, 4, 2, 0, 31), (False, 32, 64, 4, 2, 0, 14),
    (False, 64, 128, 4, 2, 0, 6),                                           # DreamerV2 encoder
    (True, 512, 64, 5, 2, 0, 1), (True, 64, 32, 5, 2, 0, 5), (True, 32, 16, 6, 2, 0, 13),
    (True, 16, 3, 6, 2, 0, 30),                                             # its decoder
]


def layer(transposed, cin, cout, k, stride, padding, dtype=torch.float64):
    torch.manual_seed(0)
    cls = fastconv.ConvTranspose2d if transposed else fastconv.Conv2d
    return cls(cin, cout, k, stride, padding).to(dtype)


def outputs_and_grads(m, x, grad, fast: bool, autocast: bool = False):
    m.fast = fast
    m.zero_grad()
    x = x.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = m(x)
    y.backward(grad.to(y.dtype))
    return y.detach(), x.grad, m.weight.grad.clone(), m.bias.grad.clone()


def rel_err(a, b) -> float:
    a, b = a.detach(), b.detach()
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def spec_id(s) -> str:
    return "{}{}-{}-k{}s{}p{}-{}".format("T" if s[0] else "C", *s[1:])


@pytest.mark.parametrize("spec", LAYERS, ids=spec_id)
def test_fast_layer_equals_torch_nn_in_float64(spec):
    m = layer(*spec[:6])
    x = torch.randn(3, spec[1], spec[6], spec[6], dtype=torch.float64)
    with torch.no_grad():
        grad = torch.randn_like(m(x))
    got = outputs_and_grads(m, x, grad, fast=True)
    ref = outputs_and_grads(m, x, grad, fast=False)
    for name, g, r in zip(("output", "input grad", "weight grad", "bias grad"), got, ref, strict=True):
        assert g.shape == r.shape and g.dtype == r.dtype, name
        assert rel_err(g, r) < 1e-12, f"{name}: relative error {rel_err(g, r):.2e}"


def test_a_wrong_phase_order_is_caught():
    """The float64 check can fail: swapping the two phases of the interleave (a plausible
    indexing slip) is off by O(1)."""
    m = layer(True, 16, 3, 6, 2, 0)
    x = torch.randn(2, 16, 13, 13, dtype=torch.float64)
    ref = torch.nn.functional.conv_transpose2d(x, m.weight, m.bias, stride=2)
    wrong = fastconv.conv_transpose2d_phases(x, m.weight.flip(-1), 0, ref.shape[-2:])
    assert rel_err(wrong + m.bias[:, None, None], ref) > 0.1


@pytest.mark.parametrize("spec", [s for s in LAYERS if s[4] == 2 or s[6] == 1][::2], ids=spec_id)
def test_fast_layer_under_bf16_autocast_matches_torch_nn(spec):
    m = layer(*spec[:6], dtype=torch.float32).to(memory_format=torch.channels_last)
    x = torch.randn(8, spec[1], spec[6], spec[6]).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        grad = torch.randn_like(m(x))
    got = outputs_and_grads(m, x, grad, fast=True, autocast=True)
    ref = outputs_and_grads(m, x, grad, fast=False, autocast=True)
    # Autocast's dtypes: a bf16 output, float32 gradients for the float32 input and weights.
    assert [t.dtype for t in got] == [t.dtype for t in ref] == [torch.bfloat16] + [torch.float32] * 3
    for name, g, r in zip(("output", "input grad", "weight grad", "bias grad"), got, ref, strict=True):
        assert rel_err(g, r) < 3e-2, f"{name}: relative error {rel_err(g, r):.2e}"


def test_other_shapes_and_no_grad_take_the_right_path():
    # Stride 1 with padding: not a fast shape; torch.nn's result exactly.
    m = fastconv.Conv2d(4, 5, 3, 1, 1).double()
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    assert torch.equal(m(x), torch.nn.functional.conv2d(x, m.weight, m.bias, 1, 1))
    # Inference (the actors' policy) needs no autograd state.
    enc = ConvEncoder(4).double()
    with torch.no_grad():
        a = enc.embed(torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8).double())
    assert a.shape == (3, 128)


def nets_loss(enc, dec, image_u8):
    feat = enc.embed(image_u8, sample=False)  # the beta-VAE's z mean: compiled RNG differs
    recon = dec(torch.cat([feat, feat], -1)[..., :dec_in(dec)])
    return (recon - image_u8.float() / 255).square().mean() + feat.square().mean()


def dec_in(dec) -> int:
    return dec.fc.in_features if isinstance(dec, ConvDecoder) else dec.fc[0].in_features


@pytest.mark.parametrize("kind", ["conv", "beta_vae"])
def test_compiled_nets_with_fast_convs_match_eager_torch_nn(kind):
    """Inductor traces the custom autograd functions: the compiled nets under bf16 autocast give
    the loss and gradients of the eager torch.nn nets."""
    torch.manual_seed(0)
    d = 4
    if kind == "conv":
        enc, dec = ConvEncoder(d), ConvDecoder(2 * 32 * d, d)
    else:
        enc, dec = BetaVAEEncoder(d, 8), ImageDecoder(16, d, 8)
    for m in (enc, dec):
        m.channels_last = True
        m.to(memory_format=torch.channels_last)
    image = torch.randint(0, 256, (6, 64, 64, 3), dtype=torch.uint8)

    def run(fast: bool, compiled: bool):
        for m in (enc, dec):
            fastconv.set_fast(m, fast)
            m.zero_grad()
        torch.manual_seed(1)
        fn = torch.compile(nets_loss, dynamic=False) if compiled else nets_loss
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = fn(enc, dec, image)
        loss.backward()
        return float(loss), [p.grad.clone() for m in (enc, dec) for p in m.parameters()]

    ref_loss, ref_grads = run(fast=False, compiled=False)
    loss, grads = run(fast=True, compiled=True)
    assert loss == pytest.approx(ref_loss, rel=2e-2)
    for g, r in zip(grads, ref_grads, strict=True):
        assert rel_err(g, r) < 5e-2


@pytest.mark.parametrize("encoder", ["conv", "beta_vae"])
def test_learner_update_with_fast_convs_equals_torch_nn(encoder):
    """A whole learner update (fp32): every metric and every module's gradient norm as with
    torch.nn's convolutions."""
    def update(fast: bool):
        cfg = load_config(["tiny"], ["train.precision=fp32", f"train.fast_convs={str(fast).lower()}",
                                     f"model.encoder={encoder}", "distill.enabled=false"])
        learner = Learner(cfg, A)
        torch.manual_seed(1)
        metrics = learner.update(make_batch(cfg), agent_step=0)
        norms = {name: float(torch.stack([p.grad.double().norm() for p in m.parameters()
                                          if p.grad is not None]).norm())
                 for name, m in (("encoder", learner.wm.encoder), ("decoder", learner.wm.decoder))}
        return metrics, norms

    ref_m, ref_n = update(False)
    got_m, got_n = update(True)
    skip = {"update_seconds", "updates", "eta"}
    bad = [f"{k}: {ref_m[k]:.6g} vs {got_m[k]:.6g}" for k in ref_m
           if k not in skip and abs(got_m[k] - ref_m[k]) > 1e-4 * abs(ref_m[k]) + 1e-6]
    bad += [f"{k} grad norm: {ref_n[k]:.6g} vs {got_n[k]:.6g}" for k in ref_n
            if abs(got_n[k] - ref_n[k]) > 1e-4 * abs(ref_n[k])]
    assert not bad, bad
