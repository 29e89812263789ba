"""The learner's Adam against a NumPy transcription of TF/Keras Adam and DreamerV2's decay."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diswm.models.optim import Adam, keras_eps
from diswm.presets import load_config


def tf_adam_reference(theta0, grads, lr, eps, wd, beta1=0.9, beta2=0.999):
    """TF 2's `tf.keras.optimizers.Adam` (`_resource_apply_dense`: lr_t = lr * sqrt(1 - b2^t) /
    (1 - b1^t); var -= lr_t * m / (sqrt(v) + epsilon)), preceded each step by danijar/dreamerv2's
    `_apply_weight_decay` (var *= 1 - wd), in float64."""
    theta = np.array(theta0, np.float64)
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    for t, g in enumerate(grads, start=1):
        theta = (1 - wd) * theta
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        lr_t = lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
        theta = theta - lr_t * m / (np.sqrt(v) + eps)
    return theta


def run_torch(theta0, grads, **kwargs):
    p = torch.nn.Parameter(torch.tensor(theta0, dtype=torch.float64))
    opt = Adam([p], **kwargs)
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    return p.detach().numpy(), opt


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    theta0 = rng.normal(size=64)
    # Small gradients, where eps matters most (sqrt(v) ~ 1e-5 .. 1e-3), over 300 steps.
    grads = [rng.normal(size=64) * 10.0 ** rng.uniform(-5.5, -3, size=64) for _ in range(300)]
    return theta0, grads


def test_keras_form_equals_tf_adam_update_rule(problem):
    theta0, grads = problem
    want = tf_adam_reference(theta0, grads, lr=3e-4, eps=1e-5, wd=1e-6)
    got, _ = run_torch(theta0, grads, lr=3e-4, eps=1e-5, eps_form="keras", weight_decay=1e-6)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    # PyTorch's own eps is a different rule on this problem: the test can tell them apart.
    plain, _ = run_torch(theta0, grads, lr=3e-4, eps=1e-5, eps_form="torch", weight_decay=1e-6)
    assert np.abs(plain - want).max() > 1e-6


def test_torch_form_is_pytorch_adam(problem):
    theta0, grads = problem
    got, _ = run_torch(theta0, grads, lr=1e-3, eps=1e-5)
    p = torch.nn.Parameter(torch.tensor(theta0, dtype=torch.float64))
    ref = torch.optim.Adam([p], lr=1e-3, eps=1e-5)
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float64)
        ref.step()
    np.testing.assert_array_equal(got, p.detach().numpy())


def test_weight_decay_is_not_scaled_by_the_learning_rate():
    p = torch.nn.Parameter(torch.full((3,), 2.0, dtype=torch.float64))
    opt = Adam([p], lr=1e-3, eps=1e-5, weight_decay=0.1)
    p.grad = torch.zeros_like(p)  # Adam's step is 0 for a zero gradient: only the decay acts
    opt.step()
    np.testing.assert_allclose(p.detach().numpy(), 2.0 * 0.9, rtol=0, atol=1e-15)


def test_keras_eps_values():
    # The figures: about 3e-4 at the first update, 3e-5 at 100, 1.3e-5 at 1,000.
    assert keras_eps(1e-5, 1) == pytest.approx(1e-5 / math.sqrt(1e-3))
    assert keras_eps(1e-5, 1) == pytest.approx(3.16e-4, rel=1e-3)
    assert keras_eps(1e-5, 100) == pytest.approx(3.24e-5, rel=1e-2)
    assert keras_eps(1e-5, 1000) == pytest.approx(1.26e-5, rel=1e-2)


def test_state_dict_round_trip_continues_exactly(problem):
    theta0, grads = problem
    want, _ = run_torch(theta0, grads, lr=3e-4, eps=1e-5, eps_form="keras", weight_decay=1e-6)
    p = torch.nn.Parameter(torch.tensor(theta0, dtype=torch.float64))
    opt = Adam([p], lr=3e-4, eps=1e-5, eps_form="keras", weight_decay=1e-6)
    for g in grads[:150]:
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    state = opt.state_dict()
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = Adam([q], lr=3e-4, eps=1e-5, eps_form="keras", weight_decay=1e-6)
    opt2.load_state_dict(state)
    assert opt2.param_groups[0]["keras_step"] == 150
    for g in grads[150:]:
        q.grad = torch.tensor(g, dtype=torch.float64)
        opt2.step()
    np.testing.assert_array_equal(q.detach().numpy(), want)


def test_bad_settings_are_refused():
    p = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="eps_form"):
        Adam([p], lr=1e-3, eps=1e-5, eps_form="tf")
    with pytest.raises(ValueError, match="weight_decay"):
        Adam([p], lr=1e-3, eps=1e-5, weight_decay=1.0)


def test_learner_builds_its_optimizers_from_the_config():
    from learner.learner import Learner

    cfg = load_config(["tiny"], ["optim.adam_eps=keras", "optim.weight_decay=1e-6",
                                 "model.encoder=conv", "distill.enabled=false"])
    learner = Learner(cfg, action_dim=2, device="cpu")
    for name, lr in (("model", 3e-4), ("actor", 8e-5), ("critic", 8e-5)):
        group = learner.opts[name].param_groups[0]
        assert (group["eps_form"], group["decay"], group["lr"]) == ("keras", 1e-6, lr)
