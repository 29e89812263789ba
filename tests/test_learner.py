"""The Learner: frozen teacher, distillation schedule, optimizer groups, weights, exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diswm.models import VideoModel, combine
from diswm.models.nets import preprocess_image
from diswm.presets import load_config
from learner import Learner

A = 6


def make_batch(cfg, seed: int = 0, structured: bool = False) -> dict[str, np.ndarray]:
    """A (B, T) batch in the replay's layout; `structured`: a moving square, learnable."""
    rng = np.random.default_rng(seed)
    B, T = cfg.train.batch_size, cfg.train.batch_length
    if structured:
        image = np.zeros((B, T, 64, 64, 3), np.uint8)
        for b in range(B):
            for t in range(T):
                x = (4 * t + 9 * b) % 48
                image[b, t, 20:36, x:x + 16] = (200, 80 + 20 * b, 40)
    else:
        image = rng.integers(0, 256, (B, T, 64, 64, 3), dtype=np.uint8)
    first = np.zeros((B, T), bool)
    first[:, 0] = True
    action = rng.uniform(-1, 1, (B, T, A)).astype(np.float32)
    action[first] = 0
    return {"image": image, "action": action,
            "reward": rng.normal(size=(B, T)).astype(np.float32), "is_first": first,
            "is_last": np.zeros((B, T), bool), "is_terminal": np.zeros((B, T), bool),
            "policy_version": np.zeros((B, T), np.int64)}


@pytest.fixture(scope="module")
def cfg():
    return load_config(["tiny"])


@pytest.fixture(scope="module")
def pretrained(cfg):
    torch.manual_seed(123)
    return VideoModel(cfg.model).state_dict()


def test_teacher_frozen_and_in_no_optimizer_while_student_learns(cfg, pretrained):
    learner = Learner(cfg, A, pretrained=pretrained)
    teacher = learner.teacher
    assert teacher is not None and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    in_opts = {id(p) for opt in learner.opts.values() for g in opt.param_groups for p in g["params"]}
    assert not in_opts & {id(p) for p in teacher.parameters()}
    assert all(id(p) in in_opts for p in learner.wm.encoder.parameters())
    # The teacher starts as the pretrained encoder; the student is freshly initialised.
    torch.testing.assert_close(teacher.head.weight, pretrained["encoder.head.weight"])
    assert not torch.equal(learner.wm.encoder.head.weight, pretrained["encoder.head.weight"])
    before_t = {k: v.clone() for k, v in teacher.state_dict().items()}
    before_s = {k: v.clone() for k, v in learner.wm.encoder.state_dict().items()}
    for i in range(3):
        metrics = learner.update(make_batch(cfg, i), agent_step=100 * i)
        assert metrics["model/distill"] > 0 and np.isfinite(metrics["model_loss"])
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before_t[k]), k
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.training
    changed = [k for k, v in learner.wm.encoder.state_dict().items() if not torch.equal(v, before_s[k])]
    assert len(changed) == len(before_s)


def test_eta_follows_agent_steps_and_distill_term_weighs_in(cfg, pretrained):
    learner = Learner(cfg, A, pretrained=pretrained)
    m0 = learner.update(make_batch(cfg), agent_step=0)
    m1 = learner.update(make_batch(cfg), agent_step=25_000)
    m2 = learner.update(make_batch(cfg), agent_step=400_000)
    assert (m0["eta"], m1["eta"], m2["eta"]) == pytest.approx((0.1, 0.05, 0.01))
    # model_loss is exactly the configured combination of the named terms.
    s = cfg.model
    expect = (s.image_scale * m2["model/image"] + s.reward_scale * m2["model/reward"]
              + s.beta * m2["model/beta"] + s.kl_scale * m2["model/kl"] + 0.01 * m2["model/distill"])
    assert m2["model_loss"] == pytest.approx(expect, rel=1e-5)
    pusher = Learner(load_config(["tiny", "reacher_easy_to_pusher"]), A, pretrained=pretrained)
    assert pusher.update(make_batch(cfg), agent_step=10_000)["eta"] == 0.0
    no_teacher = Learner(cfg, A)
    assert no_teacher.teacher is None and "model/distill" not in no_teacher.update(make_batch(cfg))
    off = Learner(load_config(["tiny", "no_distill"]), A, pretrained=pretrained)
    assert off.teacher is None


def test_optimizer_groups_and_learning_rates(cfg):
    learner = Learner(load_config([]), A)  # defaults: 3e-4 / 8e-5 / 8e-5, eps 1e-5
    lrs = {k: o.param_groups[0]["lr"] for k, o in learner.opts.items()}
    assert lrs == {"model": 3e-4, "actor": 8e-5, "critic": 8e-5}
    assert all(o.param_groups[0]["eps"] == 1e-5 for o in learner.opts.values())
    ids = {k: {id(p) for g in o.param_groups for p in g["params"]} for k, o in learner.opts.items()}
    assert ids["model"] == {id(p) for p in learner.wm.parameters()}
    assert ids["actor"] == {id(p) for p in learner.ac.actor.parameters()}
    assert ids["critic"] == {id(p) for p in learner.ac.critic.parameters()}
    assert not any(id(p) in ids[k] for p in learner.ac.slow_critic.parameters() for k in ids)


def test_slow_critic_copies_every_n_updates():
    cfg = load_config(["tiny"], ["behaviour.slow_critic_update=3"])
    learner = Learner(cfg, A)
    snapshots, copied_from = [], []
    for i in range(7):
        snapshots.append([p.detach().clone() for p in learner.ac.critic.parameters()])
        learner.update(make_batch(cfg, i))
        slow = list(learner.ac.slow_critic.parameters())
        copied_from.append([k for k, snap in enumerate(snapshots) if all(
            torch.equal(a, b) for a, b in zip(snap, slow, strict=True))])
    # The slow critic holds the critic as it was before updates 0, 3 and 6 (DreamerV2: copy
    # every `slow_critic_update` updates), never the current critic.
    assert copied_from == [[0], [0], [0], [3], [3], [3], [6]]


def test_warmup_trains_only_the_world_model_then_the_behaviour_from_a_fresh_slow_critic():
    cfg = load_config(["tiny"], ["behaviour.warmup_updates=3", "behaviour.slow_critic_update=2"])
    learner = Learner(cfg, A)
    snap = lambda m: [p.detach().clone() for p in m.parameters()]  # noqa: E731
    same = lambda a, m: all(torch.equal(x, y) for x, y in zip(a, m.parameters(), strict=True))  # noqa: E731
    actor0, critic0, wm0 = snap(learner.ac.actor), snap(learner.ac.critic), snap(learner.wm)
    rows = [learner.update(make_batch(cfg, i)) for i in range(3)]
    # Three warm-up updates: the world model moved, the actor and critic did not.
    assert not same(wm0, learner.wm)
    assert same(actor0, learner.ac.actor) and same(critic0, learner.ac.critic)
    for row in rows:  # the behaviour's columns exist on every row, NaN while warming up
        for key in ("actor_loss", "critic_loss", "actor_entropy", "return", "actor_grad_norm",
                    "actor/policy", "critic/critic"):
            assert np.isnan(row[key]), key
        assert np.isfinite(row["model_loss"])
    row = learner.update(make_batch(cfg, 3))
    assert set(row) == set(rows[0])
    assert np.isfinite(row["actor_loss"]) and np.isfinite(row["actor_entropy"])
    assert not same(actor0, learner.ac.actor) and not same(critic0, learner.ac.critic)
    # The first behaviour update took its targets from the critic as it was then (the slow
    # critic copies at behaviour updates 0, 2, 4, ... counted from the end of the warm-up).
    assert same(critic0, learner.ac.slow_critic)
    learner.update(make_batch(cfg, 4))
    critic_after_4 = snap(learner.ac.critic)
    learner.update(make_batch(cfg, 5))
    assert same(critic_after_4, learner.ac.slow_critic)


def test_world_model_loss_falls_on_a_fixed_batch(cfg):
    learner = Learner(load_config(["tiny"], ["optim.model_lr=0.001"]), A)
    batch = make_batch(cfg, structured=True)
    floor = 64 * 64 * 3 * 0.5 * np.log(2 * np.pi)  # the image NLL's constant (unit variance)
    losses = [learner.update(batch)["model_loss"] - floor for _ in range(40)]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


def test_save_restore_resumes_bit_identically(cfg, pretrained, tmp_path):
    batches = [make_batch(cfg, s) for s in range(4)]
    a = Learner(cfg, A, pretrained=pretrained)
    a.scheme = "B"
    a.update(batches[0], agent_step=10)
    a.update(batches[1], agent_step=20)
    a.save(tmp_path / "learner.pt", extra={"env_steps": 40})
    ma = [a.update(batches[2], agent_step=30), a.update(batches[3], agent_step=40)]
    torch.manual_seed(999)  # disturb the RNG and build a different learner
    b, extra = Learner.from_checkpoint(tmp_path / "learner.pt")
    assert extra == {"env_steps": 40} and b.scheme == "B" and b.updates == 2
    assert b.version == 2 and b.agent_step == 20
    mb = [b.update(batches[2], agent_step=30), b.update(batches[3], agent_step=40)]
    for x, y in zip(ma, mb, strict=True):
        assert {k: v for k, v in x.items() if k != "update_seconds"} == \
            {k: v for k, v in y.items() if k != "update_seconds"}
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    for name in a.opts:
        oa, ob = a.opts[name].state_dict()["state"], b.opts[name].state_dict()["state"]
        assert all(torch.equal(oa[i]["exp_avg_sq"], ob[i]["exp_avg_sq"]) for i in oa)
    # Restore into an existing learner too.
    c = Learner(cfg, A, pretrained=pretrained)
    c.restore(tmp_path / "learner.pt")
    assert c.update(batches[2], agent_step=30)["model_loss"] == ma[0]["model_loss"]


def test_discrete_latents_learner_resumes_identically(tmp_path):
    """DreamerV2's categorical latents (model.discrete) through a whole update and a checkpoint."""
    cfg = load_config(["tiny"], ["model.discrete=4"])
    batches = [make_batch(cfg, s) for s in range(3)]
    a = Learner(cfg, A)
    assert a.wm.rssm.feat_dim == cfg.model.stoch * 4 + cfg.model.deter
    m0 = a.update(batches[0])
    assert all(np.isfinite(v) for v in m0.values())
    a.save(tmp_path / "learner.pt")
    ma = [a.update(b) for b in batches[1:]]
    b, _ = Learner.from_checkpoint(tmp_path / "learner.pt")
    assert b.cfg.model.discrete == 4
    mb = [b.update(x) for x in batches[1:]]
    for x, y in zip(ma, mb, strict=True):
        assert {k: v for k, v in x.items() if k != "update_seconds"} == \
            {k: v for k, v in y.items() if k != "update_seconds"}


def test_checkpoint_loads_without_unpickling(cfg, tmp_path):
    path = Learner(cfg, A).save(tmp_path / "l.pt")
    payload = torch.load(path, weights_only=True)  # raises if anything needs unpickling
    assert payload["format"] == "diswm-learner-v1"
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a diswm-learner"):
        Learner(cfg, A).restore(tmp_path / "other.pt")


def test_weights_roundtrip_and_policy_scope(cfg):
    a, b = Learner(cfg, A), Learner(load_config(["tiny"], ["train.seed=1"]), A)
    a.update(make_batch(cfg))
    version, state = a.get_weights()
    assert version == 1 and all(v.device.type == "cpu" for v in state.values())
    b.set_weights(version, state)
    assert b.version == 1 and all(torch.equal(v, b.state_dict()[k]) for k, v in state.items())
    _, policy = a.get_weights("policy")
    assert policy and all(k.startswith(("wm.encoder.", "wm.rssm.", "ac.actor.")) for k in policy)
    assert not any(k.startswith("wm.decoder.") for k in policy)
    state["wm.rssm.img_in.bias"].add_(1.0)  # copies: the learner is unaffected
    assert not torch.equal(a.state_dict()["wm.rssm.img_in.bias"], state["wm.rssm.img_in.bias"])


def test_dv2_finetune_loads_pretrained_dreamerv2_weights():
    """DV2-finetune pretrains and loads DreamerV2's own architecture (conv encoder/decoder)."""
    dv2 = load_config(["tiny", "dv2_finetune"])
    assert dv2.model.encoder == "conv"
    torch.manual_seed(7)
    pretrained = VideoModel(dv2.model).state_dict()
    learner = Learner(dv2, A, pretrained=pretrained)
    assert learner.teacher is None
    wm = learner.wm.state_dict()
    loaded = [k for k in pretrained if k.split(".")[0] in ("encoder", "rssm", "decoder")]
    assert {"encoder.convs.6.weight", "decoder.fc.weight", "rssm.gru.linear.weight"} <= set(loaded)
    for key in loaded:
        assert torch.equal(wm[key], pretrained[key]), key
    assert "rssm.img_in_action.weight" not in pretrained
    assert "rssm.img_in_action.weight" in wm


def test_dv2_finetune_refuses_a_beta_vae_teacher(cfg, pretrained):
    with pytest.raises(ValueError, match="does not fit this world model .model.encoder=conv"):
        Learner(load_config(["tiny", "dv2_finetune"]), A, pretrained=pretrained)


def test_distill_default_is_the_released_batchmean_weighting(cfg, pretrained):
    """The released code: F.kl_div(log_softmax(z_student), softmax(z_teacher),
    reduction="batchmean") on (B, T, Z) tensors: summed over T, averaged over B."""
    assert load_config([]).distill.reduction == "batchmean"
    learner = Learner(cfg, A, pretrained=pretrained)
    data = learner._to_device(make_batch(cfg, 0, structured=True))
    torch.manual_seed(5)
    with torch.no_grad():
        z_t = learner.teacher(data["image"], sample=False)[0]
        losses, aux = learner.wm.loss(data, z_teacher_BTZ=z_t)
        ref = torch.nn.functional.kl_div(torch.log_softmax(aux["z_student"], -1),
                                         torch.softmax(z_t, -1), reduction="batchmean")
    torch.testing.assert_close(losses["distill"], ref)
    assert ref.dim() == 0 and aux["z_student"].shape[:2] == data["reward"].shape


def test_distill_share_of_the_encoder_gradient(cfg, pretrained):
    batch = make_batch(cfg, 0, structured=True)
    learner = Learner(cfg, A, pretrained=pretrained)
    torch.manual_seed(9)
    share = learner.update(batch, agent_step=0, diagnostics=True)["distill_grad_share"]
    # Independently: the same first update's world-model loss, gradients by autograd.grad.
    ref = Learner(cfg, A, pretrained=pretrained)
    torch.manual_seed(9)
    data = ref._to_device(batch)
    data["image"] = preprocess_image(data["image"])
    with ref.precision.autocast():
        z_t = ref.teacher(data["image"], sample=False)[0]
        losses, _ = ref.wm.loss(data, z_teacher_BTZ=z_t)
        total = combine(losses, ref.wm.scales(eta=ref.eta()))
    params = list(ref.wm.encoder.parameters())

    def norm(loss):
        grads = torch.autograd.grad(loss, params, retain_graph=True)
        return float(torch.stack([g.norm() for g in grads]).norm())
    expect = norm(ref.eta() * losses["distill"]) / norm(total)
    assert 0 < share < 1
    assert share == pytest.approx(expect, rel=1e-3)
    assert "distill_grad_share" not in learner.update(batch, agent_step=0)
