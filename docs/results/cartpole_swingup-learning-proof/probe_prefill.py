# ruff: noqa
# Probe script, kept as it was run for this folder's logs (run from the repository root with
# MUJOCO_GL=egl .venv/bin/python docs/results/cartpole_swingup-learning-proof/probe_prefill.py NAME UPDATES [KEY=VALUE ...];
# environment: WARM=N world-model-only updates first, ACTOR_EPS=E Adam's epsilon for the actor,
# ZERO_HEADS=1 the reward head's output layer starts at zero, =2 the critics' too).
import os
import sys
import time

import numpy as np
import torch

torch.set_num_threads(1)
import diswm.models.behaviour as B
from diswm.presets import load_config
from diswm.envs import make_env
from diswm.rollout import RandomPolicy
from learner.learner import Learner
from replay_service.buffer import SequenceBuffer

var = sys.argv[1]; n_up = int(sys.argv[2]); extra = sys.argv[3:]
cfg = load_config(["cpu", "finger_spin_to_cartpole_swingup", "dreamerv2"],
                  ["distraction.enabled=false", "train.compile=false", *extra])
env = make_env(cfg.env, cfg.distraction, seed=0)
pol = RandomPolicy(env.act_space.shape, 0)
buf = SequenceBuffer(100000, seed=0, chunk_length=64)
steps = 0
while steps < 1000:
    obs = env.reset(); buf.add("e", {**obs, "action": np.zeros(1, np.float32), "policy_version": np.int64(0)})
    while not obs["is_last"]:
        a = pol(obs); obs = env.step(a); steps += 1
        buf.add("e", {**obs, "action": a, "policy_version": np.int64(0)})
buf.flush()
learner = Learner(cfg, 1, log=lambda s: None)
if var == "novalue":
    learner.ac.slow_critic.forward = lambda x: torch.zeros(*x.shape[:-1], 1, dtype=x.dtype)
if var == "noreward":
    orig = B.lambda_return
    B.lambda_return = lambda r, v, d, b, l: orig(r * 0, v, d, b, l)
def last_linear(mod):
    return [m for m in mod.modules() if isinstance(m, torch.nn.Linear)][-1]
if os.environ.get("ZERO_HEADS"):  # thirteenth session: DreamerV3's zero-initialised output layers
    heads = [learner.wm.reward] + ([learner.ac.critic, learner.ac.slow_critic]
                                   if os.environ["ZERO_HEADS"] == "2" else [])
    for h in heads:
        with torch.no_grad():
            last_linear(h).weight.zero_(); last_linear(h).bias.zero_()
warm = int(os.environ.get("WARM", "0"))
if os.environ.get("ACTOR_EPS"):  # ninth session: Adam's epsilon for the actor alone
    for g in learner.opts["actor"].param_groups:
        g["eps"] = float(os.environ["ACTOR_EPS"])
def set_lr(scale):
    for name in ("actor", "critic"):
        for g in learner.opts[name].param_groups:
            g["lr"] = scale * (cfg.optim.actor_lr if name == "actor" else cfg.optim.critic_lr)
if warm: set_lr(0.0)
keys = ("image", "action", "reward", "is_first", "is_terminal")
t0 = time.time()
for u in range(1, n_up + 1):
    batch = buf.sample(16, 32)
    if u == warm + 1 and warm: set_lr(1.0)
    m = learner.update({k: batch[k] for k in keys})
    if u % 20 == 0:
        # the actor's mean action on this batch's posterior states
        with torch.no_grad():
            data = learner._to_device({k: batch[k] for k in keys})
            from diswm.models.nets import preprocess_image
            img = preprocess_image(data["image"])
            emb = learner.wm.embed(img)
            post, _ = learner.wm.rssm.observe(emb, data["action"], data["is_first"])
            from diswm.models.rssm import RSSM
            mean, std = learner.ac.actor.params(RSSM.feat(post))
        print(f"{var} u{u} ent {m['actor_entropy']:.3f} ret {m['return']:.2f} val {m['value']:.2f} "
              f"imr {m['imag_reward']:.3f} mean+ {(mean>0).float().mean():.2f} |mean| {mean.abs().mean():.2f} "
              f"std {std.mean():.2f} rew {m['model/reward']:.3f} {time.time()-t0:.0f}s", flush=True)
