"""Models and losses against independent references (torch.distributions, plain loops, formulas)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import distributions as D

from diswm.config import ConfigError
from diswm.models import (
    RSSM,
    ActorCritic,
    BetaVAEEncoder,
    ImageDecoder,
    VideoModel,
    WorldModel,
    balanced_kl,
    combine,
    distill_kl,
    eta_at,
    lambda_return,
    standard_normal_kl,
    video_scales,
)
from diswm.models.dists import (
    TruncNormal,
    UntruncatedNormal,
    straight_through_onehot,
    unit_normal_nll,
)
from diswm.models.nets import preprocess_image
from diswm.presets import load_config

A = 6  # action dims (cheetah)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def lin(i, o, bias=True):
    return i * o + (o if bias else 0)


def conv(i, o, k):
    return i * o * k * k + o


def mlp(i, o, layers, units):
    return lin(i, units) + (layers - 1) * lin(units, units) + lin(units, o)


@pytest.mark.parametrize("preset", ["tiny", "debug", "defaults"])
def test_parameter_counts_and_shapes(preset):
    cfg = load_config([] if preset == "defaults" else [preset])
    m, b = cfg.model, cfg.behaviour
    d, z, S, Dt, H, U = m.cnn_depth, m.z_dim, m.stoch, m.deter, m.hidden, m.units
    wm = WorldModel(m, A)
    ac = ActorCritic(b, S + Dt, A, U)
    enc = conv(3, d, 4) + conv(d, d, 4) + conv(d, 2 * d, 4) + conv(2 * d, 2 * d, 4) \
        + conv(2 * d, 8 * d, 4) + lin(8 * d, 2 * z)
    dec = lin(S + Dt, z) + lin(z, 8 * d) + conv(8 * d, 2 * d, 4) + conv(2 * d, 2 * d, 4) \
        + conv(2 * d, d, 4) + conv(d, d, 4) + conv(d, 3, 4)
    rssm = (lin(S, H) + lin(A, H, bias=False) + lin(H + Dt, 3 * Dt, bias=False) + 2 * 3 * Dt
            + lin(Dt, H) + lin(H, 2 * S) + lin(Dt + z, H) + lin(H, 2 * S))
    assert n_params(wm.encoder) == enc
    assert n_params(wm.decoder) == dec
    assert n_params(wm.rssm) == rssm
    assert n_params(wm.reward) == mlp(S + Dt, 1, m.reward_layers, U)
    assert n_params(wm) == enc + dec + rssm + mlp(S + Dt, 1, m.reward_layers, U)
    assert n_params(ac.actor) == mlp(S + Dt, 2 * A, b.actor_layers, U)
    assert n_params(ac.critic) == mlp(S + Dt, 1, b.critic_layers, U)
    if preset == "defaults":  # the DESIGN sizes: 3->32->32->64->64 convs, 4x4 conv to 256
        assert [c.out_channels for c in wm.encoder.convs if hasattr(c, "out_channels")] == \
            [32, 32, 64, 64, 256]
        assert (S, Dt, H, U, z) == (50, 200, 200, 400, 20)
    # shapes, on a short batch
    B, T = 2, 3
    image = torch.randint(0, 256, (B, T, 64, 64, 3), dtype=torch.uint8)
    mean, logvar, zs = wm.encoder(image)
    assert mean.shape == logvar.shape == zs.shape == (B, T, z)
    post, prior = wm.rssm.observe(zs, torch.zeros(B, T, A), torch.zeros(B, T, dtype=torch.bool))
    assert post["stoch"].shape == prior["mean"].shape == (B, T, S)
    assert post["deter"].shape == (B, T, Dt)
    assert wm.decoder(RSSM.feat(post)).shape == (B, T, 64, 64, 3)


def _gauss(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return {"mean": torch.randn(shape, generator=g, requires_grad=True),
            "std": (torch.rand(shape, generator=g) + 0.2).requires_grad_(True)}


def _check_balanced(loss, value, ref, prior_x, post_x):
    """`balanced_kl` (free = 0) against a reference KL: same value; the prior gets 0.8 of its
    gradient, the posterior 0.2 (KL balancing)."""
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(value, ref.detach())
    g_loss = torch.autograd.grad(loss, [prior_x, post_x], retain_graph=True)
    g_ref = torch.autograd.grad(ref, [prior_x, post_x], retain_graph=True)
    torch.testing.assert_close(g_loss[0], 0.8 * g_ref[0])
    torch.testing.assert_close(g_loss[1], 0.2 * g_ref[1])


def test_balanced_kl_equals_torch_distributions_and_splits_gradients():
    post, prior = _gauss((4, 5, 7), 0), _gauss((4, 5, 7), 1)
    loss, value = balanced_kl(post, prior, balance=0.8, free=0.0)

    def kl(p, q):
        return D.kl_divergence(D.Independent(D.Normal(p["mean"], p["std"]), 1),
                               D.Independent(D.Normal(q["mean"], q["std"]), 1))
    ref = kl(post, prior).mean()
    _check_balanced(loss, value, ref, prior["mean"], post["mean"])
    # Free nats: below the threshold the loss is the constant `free` with no gradient.
    loss_free, _ = balanced_kl(post, prior, balance=0.8, free=float(ref.detach()) + 1.0)
    assert float(loss_free.detach()) == pytest.approx(float(ref.detach()) + 1.0)
    assert not loss_free.requires_grad or torch.autograd.grad(
        loss_free, prior["mean"], allow_unused=True)[0].abs().sum() == 0


def _cat_logits(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return {"logit": (2 * torch.randn(shape, generator=g)).requires_grad_(True)}


def test_categorical_balanced_kl_equals_torch_distributions():
    S, K = 3, 5
    post, prior = _cat_logits((4, 6, S * K), 0), _cat_logits((4, 6, S * K), 1)
    loss, value = balanced_kl(post, prior, balance=0.8, free=0.0, classes=K)

    def kl(p, q):  # S independent one-hot categoricals per state
        dist = lambda s: D.Independent(D.OneHotCategorical(  # noqa: E731
            logits=s["logit"].unflatten(-1, (S, K))), 1)
        return D.kl_divergence(dist(p), dist(q))
    ref = kl(post, prior).mean()
    _check_balanced(loss, value, ref, prior["logit"], post["logit"])
    # The Gaussian path must not be taken by mistake: grouping by the wrong class count differs.
    wrong, _ = balanced_kl(post, prior, balance=0.8, free=0.0, classes=S)
    assert abs(float(wrong) - float(ref)) > 1e-3


def test_straight_through_onehot_draws_the_categorical_and_passes_probs_gradient():
    logit = torch.tensor([[1.0, 0.0, -1.0, 2.0]]).expand(200_000, 4).contiguous()
    torch.manual_seed(0)
    draw = straight_through_onehot(logit)
    assert torch.equal(draw.detach().sum(-1), torch.ones(200_000))  # one-hot values
    assert set(draw.detach().unique().tolist()) == {0.0, 1.0}
    probs = torch.softmax(logit[0], -1)
    # Frequencies within 5 standard errors of softmax(logit) (binomial, n = 200k).
    freq = draw.detach().mean(0)
    se = torch.sqrt(probs * (1 - probs) / 200_000)
    assert torch.all((freq - probs).abs() < 5 * se), (freq, probs)
    # Mode without sampling; the gradient is that of softmax(logit) (straight-through).
    x = torch.tensor([0.5, -0.2, 0.1], requires_grad=True)
    mode = straight_through_onehot(x, sample=False)
    assert mode.tolist() == [1.0, 0.0, 0.0]
    w = torch.tensor([1.0, 2.0, 3.0])
    (g,) = torch.autograd.grad((mode * w).sum(), x)
    (g_ref,) = torch.autograd.grad((torch.softmax(x, -1) * w).sum(), x)
    torch.testing.assert_close(g, g_ref)


def test_discrete_rssm_shapes_state_and_world_model_loss():
    cfg = load_config(["tiny"], ["model.discrete=3", "model.kl_free=0"])  # KL has a gradient
    m = cfg.model
    S, K, Dt = m.stoch, m.discrete, m.deter
    torch.manual_seed(0)
    wm = WorldModel(m, A)
    assert wm.rssm.feat_dim == S * K + Dt
    B, T = 2, 4
    batch = {"image": torch.randint(0, 256, (B, T, 64, 64, 3), dtype=torch.uint8),
             "action": torch.rand(B, T, A) * 2 - 1, "reward": torch.rand(B, T),
             "is_first": torch.zeros(B, T, dtype=torch.bool),
             "is_terminal": torch.zeros(B, T, dtype=torch.bool)}
    losses, aux = wm.loss(batch)
    post = aux["post"]
    assert set(post) == {"logit", "stoch", "deter"}
    assert post["stoch"].shape == post["logit"].shape == (B, T, S * K)
    groups = post["stoch"].unflatten(-1, (S, K))
    assert torch.equal(groups.sum(-1), torch.ones(B, T, S))  # one class per group
    combine(losses, wm.scales(eta=None)).backward()
    # Straight-through: the image loss reaches the posterior head through the one-hot samples.
    assert wm.rssm.obs_out[-1].weight.grad.abs().sum() > 0
    assert wm.rssm.img_out[-1].weight.grad.abs().sum() > 0  # the prior, through the KL
    # Gaussian and categorical RSSMs are different shapes of checkpoint: no silent mix-up.
    gauss = WorldModel(load_config(["tiny"]).model, A)
    with pytest.raises(RuntimeError, match="size mismatch"):
        gauss.load_state_dict(wm.state_dict())


def test_beta_term_equals_torch_distributions():
    g = torch.Generator().manual_seed(3)
    mean, logvar = torch.randn(3, 4, 20, generator=g), torch.randn(3, 4, 20, generator=g)
    ref = D.kl_divergence(D.Normal(mean, torch.exp(0.5 * logvar)),
                          D.Normal(torch.zeros_like(mean), torch.ones_like(mean))).sum(-1)
    torch.testing.assert_close(standard_normal_kl(mean, logvar), ref)


def test_image_nll_equals_torch_distributions():
    g = torch.Generator().manual_seed(4)
    mean, x = torch.randn(2, 3, 8, 8, 3, generator=g), torch.randn(2, 3, 8, 8, 3, generator=g)
    ref = -D.Independent(D.Normal(mean, 1.0), 3).log_prob(x)
    torch.testing.assert_close(unit_normal_nll(mean, x, 3), ref)


def test_distill_loss_equals_hand_written_formula():
    rng = np.random.default_rng(5)
    zt, zs = rng.normal(size=(3, 4, 20)), rng.normal(size=(3, 4, 20))
    ref = np.zeros((3, 4))
    for b in range(3):
        for t in range(4):
            p = [math.exp(v) for v in zt[b, t]]
            q = [math.exp(v) for v in zs[b, t]]
            p = [v / sum(p) for v in p]
            q = [v / sum(q) for v in q]
            ref[b, t] = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    student = torch.tensor(zs, requires_grad=True)
    teacher = torch.tensor(zt, requires_grad=True)
    out = distill_kl(teacher, student)
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-10, atol=1e-12)
    out.sum().backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0  # only the student learns
    assert float(distill_kl(teacher, teacher.detach()).abs().max()) < 1e-12


def test_lambda_return_equals_plain_loop():
    rng = np.random.default_rng(6)
    H, N, lam = 7, 5, 0.95
    r, v, g = rng.normal(size=(H, N)), rng.normal(size=(H, N)), rng.uniform(0.5, 1, (H, N))
    boot = rng.normal(size=N)
    ref = np.zeros((H, N))
    for n in range(N):
        nxt = boot[n]
        for t in reversed(range(H)):
            v_next = v[t + 1, n] if t + 1 < H else boot[n]
            nxt = r[t, n] + g[t, n] * ((1 - lam) * v_next + lam * nxt)
            ref[t, n] = nxt
    out = lambda_return(*(torch.tensor(a) for a in (r, v, g, boot)), lam)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12)
    # lambda = 0: one-step TD targets
    out0 = lambda_return(*(torch.tensor(a) for a in (r, v, g, boot)), 0.0).numpy()
    np.testing.assert_allclose(out0, r + g * np.concatenate([v[1:], boot[None]]), rtol=1e-12)


@pytest.mark.parametrize("preset", ["dreamerv2", "dv2_finetune"])
def test_dreamerv2_baselines_use_dreamerv2s_conv_encoder_and_decoder(preset):
    """The baselines are DreamerV2: 4 stride-2 'valid' convs (depth 32) flattened to 1024
    features, a decoder from the model state (Linear to 32d, transposed convs 5, 5, 6, 6), no
    beta-VAE bottleneck and no beta term."""
    cfg = load_config([preset])
    m = cfg.model
    assert m.encoder == "conv" and not cfg.distill.enabled
    d, S, Dt, H = m.cnn_depth, m.stoch, m.deter, m.hidden
    wm = WorldModel(m, A)
    assert wm.encoder.out_dim == 1024 and d == 32
    enc = conv(3, d, 4) + conv(d, 2 * d, 4) + conv(2 * d, 4 * d, 4) + conv(4 * d, 8 * d, 4)
    dec = lin(S + Dt, 32 * d) + conv(32 * d, 4 * d, 5) + conv(4 * d, 2 * d, 5) \
        + conv(2 * d, d, 6) + conv(d, 3, 6)
    assert (n_params(wm.encoder), n_params(wm.decoder)) == (enc, dec) == (690_144, 3_816_035)
    assert n_params(wm.rssm.obs_out) == lin(Dt + 1024, H) + lin(H, 2 * S)
    image = torch.randint(0, 256, (2, 3, 64, 64, 3), dtype=torch.uint8)
    assert wm.embed(image).shape == (2, 3, 1024)
    # The flattening is DreamerV2's (H, W, C) order whatever the memory layout.
    x = torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8)
    h = wm.encoder.convs(preprocess_image(x).permute(0, 3, 1, 2))
    torch.testing.assert_close(wm.embed(x)[0], h[0].permute(1, 2, 0).reshape(-1))
    batch = {"image": image, "action": torch.zeros(2, 3, A), "reward": torch.zeros(2, 3),
             "is_first": torch.zeros(2, 3, dtype=torch.bool),
             "is_terminal": torch.zeros(2, 3, dtype=torch.bool)}
    losses, _ = wm.loss(batch)
    assert set(losses) == {"image", "reward", "kl"} == set(wm.scales(eta=None))
    assert wm.decoder(torch.zeros(2, 3, S + Dt)).shape == (2, 3, 64, 64, 3)


def test_conv_encoder_with_distillation_is_refused():
    with pytest.raises(ConfigError, match="distill.enabled=true needs model.encoder=beta_vae"):
        load_config([], ["model.encoder=conv"])


def test_eta_schedule_default_and_delayed_pusher():
    d = load_config(["tiny"]).distill
    for step, eta in [(0, 0.1), (10_000, 0.08), (25_000, 0.05), (45_000, 0.01), (50_000, 0.01),
                      (1_000_000, 0.01)]:
        assert eta_at(step, d) == pytest.approx(eta)
    # Pusher: the released line with its step counter fixed, eta = 0.1 max(2 - t/50000, 0.1)
    # from t = 50k agent steps (slope 1/50000, floor 0.01 at 95k), and no distillation before.
    p = load_config(["tiny", "reacher_easy_to_pusher"]).distill
    for step in [*range(50_000, 120_001, 2_500), 90_500, 94_999, 500_000]:
        assert eta_at(step, p) == pytest.approx(0.1 * max(2 - step / 50_000, 0.1)), step
    for step, eta in [(0, 0.0), (49_999, 0.0), (50_000, 0.1), (72_500, 0.055), (90_500, 0.019),
                      (95_000, 0.01)]:
        assert eta_at(step, p) == pytest.approx(eta)
    off = load_config(["tiny", "no_distill"]).distill
    assert eta_at(0, off) == 0.0


def test_combine_requires_matching_keys():
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(3.0)}
    assert float(combine(losses, {"a": 1.0, "b": 0.5})) == 3.5
    with pytest.raises(AssertionError, match="do not match"):
        combine(losses, {"a": 1.0})
    with pytest.raises(AssertionError):
        combine(losses, {"a": 1.0, "b": 1.0, "c": 1.0})


def test_trunc_normal_density_entropy_and_support():
    mean = torch.tensor([[-0.9, 0.0, 0.7]])
    std = torch.tensor([[0.3, 1.5, 0.1]])
    dist = TruncNormal(mean, std)
    # The density integrates to one over [-1, 1] in every dim (a 1-d grid per dim).
    grid = torch.linspace(-1, 1, 20001)[:, None].expand(-1, 3)
    dens = torch.stack([TruncNormal(mean[:, i], std[:, i]).log_prob(grid[:, i:i + 1]).exp()
                        for i in range(3)], -1)
    torch.testing.assert_close(torch.trapezoid(dens, grid, dim=0), torch.ones(3), atol=1e-3,
                               rtol=0)
    torch.manual_seed(0)
    xs = TruncNormal(mean.expand(200_000, 3), std.expand(200_000, 3)).rsample()
    assert xs.min() > -1 and xs.max() < 1
    mc_entropy = -dist.log_prob(xs).mean()
    assert float(dist.entropy()) == pytest.approx(float(mc_entropy), abs=0.02)
    # Reparameterised: the sample mean responds to the location.
    m = torch.zeros(1000, 2, requires_grad=True)
    TruncNormal(m, torch.full((1000, 2), 0.5)).rsample().mean().backward()
    assert m.grad.abs().sum() > 0


def test_released_untruncated_normal_equals_torch_distributions():
    """`actor_dist: normal_released` (the authors' learner): a plain normal, not truncated."""
    mean = torch.tensor([[-0.9, 0.0, 0.99]])
    std = torch.tensor([[0.3, 1.5, 1.1]])
    ref = torch.distributions.Independent(torch.distributions.Normal(mean, std), 1)
    dist = UntruncatedNormal(mean, std)
    x = torch.tensor([[-2.0, 0.3, 1.7]])
    torch.testing.assert_close(dist.log_prob(x), ref.log_prob(x))
    torch.testing.assert_close(dist.entropy(), ref.entropy())
    torch.manual_seed(0)
    xs = UntruncatedNormal(mean.expand(200_000, 3), std.expand(200_000, 3)).rsample()
    torch.testing.assert_close(xs.mean(0), mean[0], atol=0.01, rtol=0)
    torch.testing.assert_close(xs.std(0), std[0], atol=0.01, rtol=0)
    # Not truncated: at mean 0.99 and std 1.1 about half the draws lie above 1.
    assert 0.45 < float((xs[:, 2] > 1).float().mean()) < 0.55
    m = torch.zeros(10, 1, requires_grad=True)
    UntruncatedNormal(m, torch.ones(10, 1)).rsample().sum().backward()
    torch.testing.assert_close(m.grad, torch.ones(10, 1))  # reparameterised: dx/dmean = 1


def test_rssm_is_first_resets_state():
    cfg = load_config(["tiny"]).model
    torch.manual_seed(0)
    rssm = RSSM(embed_dim=cfg.z_dim, action_dim=A, stoch=cfg.stoch, deter=cfg.deter,
                hidden=cfg.hidden)
    embed, action = torch.randn(2, 6, cfg.z_dim), torch.randn(2, 6, A)
    first = torch.zeros(2, 6, dtype=torch.bool)
    first[:, 0] = first[0, 3] = True
    post, _ = rssm.observe(embed, action, first, sample=False)
    fresh_first = torch.zeros(2, 3, dtype=torch.bool)
    fresh_first[:, 0] = True
    fresh, _ = rssm.observe(embed[:, 3:], action[:, 3:], fresh_first, sample=False)
    torch.testing.assert_close(post["deter"][0, 3:], fresh["deter"][0])  # reset: same as fresh
    assert not torch.allclose(post["deter"][1, 3], fresh["deter"][1, 0])  # not reset


def test_action_free_rssm_equals_zero_action_input():
    cfg = load_config(["tiny"]).model
    torch.manual_seed(1)
    free = RSSM(embed_dim=cfg.z_dim, action_dim=0, stoch=cfg.stoch, deter=cfg.deter,
                hidden=cfg.hidden)
    with_action = RSSM(embed_dim=cfg.z_dim, action_dim=A, stoch=cfg.stoch, deter=cfg.deter,
                       hidden=cfg.hidden)
    missing = with_action.load_state_dict(free.state_dict(), strict=False).missing_keys
    assert missing == ["img_in_action.weight"]
    embed, first = torch.randn(2, 5, cfg.z_dim), torch.zeros(2, 5, dtype=torch.bool)
    a, _ = free.observe(embed, None, first, sample=False)
    b, _ = with_action.observe(embed, torch.zeros(2, 5, A), first, sample=False)
    torch.testing.assert_close(a["deter"], b["deter"])


def test_video_model_loss_terms_and_scales():
    cfg = load_config(["tiny"])
    torch.manual_seed(0)
    model = VideoModel(cfg.model)
    image = torch.randint(0, 256, (2, 4, 64, 64, 3), dtype=torch.uint8)
    first = torch.zeros(2, 4, dtype=torch.bool)
    losses, aux = model.loss(image, first, balance=0.8, free=1.0)
    scales = video_scales(cfg.model, beta=cfg.pretrain.beta)
    assert set(losses) == {"image", "kl", "beta"} and scales["beta"] == 0.015
    total = combine(losses, scales)
    total.backward()
    assert model.encoder.head.weight.grad.abs().sum() > 0
    assert model.rssm.img_in_action is None  # action-free
    # The beta term equals the torch.distributions KL of the encoder's q(z|o) to N(0, I).
    torch.manual_seed(0)
    mean, logvar, _ = model.encoder(image)
    ref = D.kl_divergence(D.Normal(mean, torch.exp(0.5 * logvar)), D.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(losses["beta"], ref.mean())


def test_encoder_decoder_sizes_scale_with_image_size():
    enc, dec = BetaVAEEncoder(4, 20, size=32), ImageDecoder(10, 4, 20, size=32)
    assert enc(torch.zeros(3, 32, 32, 3, dtype=torch.uint8))[2].shape == (3, 20)
    assert dec(torch.zeros(3, 10)).shape == (3, 32, 32, 3)
    with pytest.raises(ValueError, match="multiple of 16"):
        BetaVAEEncoder(4, 20, size=40)
