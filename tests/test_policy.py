"""The actors' Policy: weights from the learner, recurrent state per env, eval vs explore."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diswm.agent import Policy
from diswm.config import replace
from diswm.models import RSSM
from diswm.presets import load_config
from learner import Learner

A, N = 6, 3


@pytest.fixture(scope="module", params=[0, 3], ids=["gaussian", "discrete"])
def setup(request):
    cfg = load_config(["tiny"], [f"model.discrete={request.param}"])
    learner = Learner(cfg, A)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, N, 64, 64, 3), dtype=np.uint8)
    return cfg, learner, frames


def obs(image, first):
    return {"image": image, "is_first": np.asarray(first, bool)}


@pytest.mark.parametrize("state_mean", [False, True])
def test_eval_actions_equal_the_learner_modules(setup, state_mean):
    """Eval: the actor's mode, with z and the latent sampled as DreamerV2 does by default
    (eval_state_mean false), or their means."""
    cfg, learner, frames = setup
    cfg = replace(cfg, train={"eval_state_mean": state_mean})
    policy = Policy(cfg, A, N, mode="eval")
    policy.load_weights(*learner.get_weights("policy"))
    assert policy.version == learner.version
    wm, actor = learner.wm, learner.ac.actor
    state, prev = wm.rssm.initial(N), torch.zeros(N, A)
    sample = not state_mean
    with torch.no_grad():
        for t in range(len(frames)):
            first = np.full(N, t == 0)
            torch.manual_seed(t)
            got = policy(obs(frames[t], first))
            torch.manual_seed(t)
            _, _, z = wm.encoder(torch.as_tensor(frames[t]), sample=sample)
            state, _ = wm.rssm.obs_step(state, prev, z, torch.as_tensor(first), sample=sample)
            prev = actor(RSSM.feat(state)).mode()
            np.testing.assert_allclose(got, prev.numpy(), rtol=1e-5, atol=1e-6)
            assert got.shape == (N, A) and got.dtype == np.float32
    if sample:  # the latents really are sampled: other draws give other actions
        assert not np.allclose(_first_action(cfg, learner, frames, 7),
                               _first_action(cfg, learner, frames, 8))


def _first_action(cfg, learner, frames, seed):
    policy = Policy(cfg, A, N, mode="eval")
    policy.load_weights(*learner.get_weights("policy"))
    torch.manual_seed(seed)
    return policy(obs(frames[0], np.ones(N)))


def test_is_first_resets_only_that_env(setup):
    cfg, learner, frames = setup
    cfg = replace(cfg, train={"eval_state_mean": True})  # deterministic
    policy = Policy(cfg, A, N, mode="eval")
    policy.load_weights(*learner.get_weights())  # the full state dict works too
    for t in range(3):
        policy(obs(frames[t], np.full(N, t == 0)))
    after = policy(obs(frames[3], [True, False, False]))
    fresh = Policy(cfg, A, N, mode="eval")
    fresh.load_weights(*learner.get_weights("policy"))
    ref = fresh(obs(frames[3], np.ones(N)))
    np.testing.assert_allclose(after[0], ref[0], rtol=1e-6)
    assert not np.allclose(after[1:], ref[1:])  # the others kept their history


def test_explore_samples_within_bounds_and_differs_from_eval(setup):
    cfg, learner, frames = setup
    explore = Policy(cfg, A, N, mode="explore")
    explore.load_weights(*learner.get_weights("policy"))
    torch.manual_seed(0)
    a1 = explore(obs(frames[0], np.ones(N)))
    a2 = explore(obs(frames[0], np.ones(N)))
    assert np.all(np.abs(a1) <= 1) and not np.allclose(a1, a2)


def test_untruncated_actor_actions_are_clipped_to_the_action_space():
    """`normal_released` samples outside [-1, 1]; the env gets (and the replay stores) the
    clipped action, and the RSSM is fed that same action."""
    cfg = load_config(["tiny"], ["behaviour.actor_dist=normal_released"])
    learner = Learner(cfg, A)
    with torch.no_grad():  # a saturated mean with a wide std: most draws leave [-1, 1]
        last = learner.ac.actor.net.net[-1]
        last.weight.zero_()
        last.bias.copy_(torch.cat([torch.full((A,), 3.0), torch.full((A,), 6.0)]))
    explore = Policy(cfg, A, N, mode="explore")
    explore.load_weights(*learner.get_weights("policy"))
    torch.manual_seed(0)
    frames = np.random.default_rng(0).integers(0, 256, (N, 64, 64, 3), dtype=np.uint8)
    actions = np.concatenate([explore(obs(frames, np.zeros(N))) for _ in range(20)])
    assert np.all(np.abs(actions) <= 1)
    assert 0.3 < np.mean(actions == 1.0) < 0.7  # clipped, not truncated: mass at the bound
    assert np.mean(actions < 0.5) > 0.1  # and the rest spread below it
    np.testing.assert_array_equal(explore.prev_action.numpy(), actions[-N:])


def test_load_weights_rejects_missing_keys_and_bad_batches(setup):
    cfg, learner, frames = setup
    policy = Policy(cfg, A, N)
    _, state = learner.get_weights("policy")
    before = {k: v.clone() for k, v in policy._modules["wm.encoder."].state_dict().items()}
    changed = {k: v + 1 if k.startswith("wm.encoder.") else v for k, v in state.items()}
    with pytest.raises(ValueError, match="missing tensor 'ac.actor."):
        policy.load_weights(1, {k: v for k, v in changed.items() if not k.startswith("ac.actor.")})
    # All or nothing: the encoder (loaded before the actor) kept its weights.
    for k, v in policy._modules["wm.encoder."].state_dict().items():
        assert torch.equal(v, before[k]), k
    key = next(k for k in state if k.startswith("ac.actor."))
    with pytest.raises(ValueError, match="has shape"):
        policy.load_weights(1, {**state, key: state[key][..., :1]})
    with pytest.raises(ValueError, match="expected 3 envs"):
        policy(obs(frames[0][:2], np.ones(2)))
    with pytest.raises(ValueError, match="mode"):
        Policy(cfg, A, N, mode="greedy")


@pytest.mark.parametrize("mode,envs", [("explore", 1), ("explore", 3), ("eval", 3)])
def test_compiled_policy_step_equals_the_eager_one(mode, envs):
    """`runtime.policy_compile`: the compiled step gives the eager step's actions and states
    (the same random draws: torch's generator), takes new weights in place, sees episode
    starts, and compiles once (one env, an actor's default, included)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # a policy of the same shape compiled earlier in this process is reused
    cfg = load_config(["tiny"])
    learners = [Learner(cfg, A), Learner(replace(cfg, train={"seed": 1}), A)]
    eager = Policy(cfg, A, envs, mode=mode)
    compiled = Policy(cfg, A, envs, mode=mode, compile=True)
    assert compiled.compile_state == "pending" and eager.compile_state == "eager"
    frames = np.random.default_rng(0).integers(0, 256, (5, envs, 64, 64, 3), dtype=np.uint8)
    starts = [row[:envs] for row in ([1, 1, 1], [0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0])]
    graphs = counters["stats"]["unique_graphs"]
    for learner in learners:
        for policy in (eager, compiled):
            policy.load_weights(*learner.get_weights("policy"))
        for t in range(len(frames)):
            torch.manual_seed(t)
            want = eager(obs(frames[t], starts[t]))
            torch.manual_seed(t)
            got = compiled(obs(frames[t], starts[t]))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
            for key, value in eager.state.items():
                torch.testing.assert_close(compiled.state[key], value, rtol=1e-5, atol=1e-5)
    assert compiled.compile_state == "compiled"
    assert counters["stats"]["unique_graphs"] - graphs == 1  # no second compile: not for new weights, nor for its own states
