# ruff: noqa
# Probe script, kept as it was run for this folder's logs (run from the repository root with
# MUJOCO_GL=egl .venv/bin/python docs/results/cartpole_swingup-learning-proof/probe_world_model.py NAME UPDATES [KEY=VALUE ...]).
"""World model alone on fixed random-policy data: does the reward head learn the reward?
R^2 of the predicted reward (posterior features) on held-out random episodes, by update."""
import os
import sys
import time

import numpy as np
import torch

torch.set_num_threads(int(os.environ.get("THREADS", "1")))
from diswm.presets import load_config
from diswm.envs import make_env
from diswm.models.nets import preprocess_image
from diswm.models.rssm import RSSM
from diswm.rollout import RandomPolicy
from learner.learner import Learner
from replay_service.buffer import SequenceBuffer

name = sys.argv[1]; n_up = int(sys.argv[2]); extra = sys.argv[3:]
cfg = load_config(["cpu", "finger_spin_to_cartpole_swingup", "dreamerv2"],
                  ["distraction.enabled=false", "train.compile=false",
                   "behaviour.warmup_updates=1000000", *extra])
def collect(seed, steps):
    env = make_env(cfg.env, cfg.distraction, seed=seed)
    pol = RandomPolicy(env.act_space.shape, seed)
    buf = SequenceBuffer(100000, seed=seed, chunk_length=64)
    n = 0
    while n < steps:
        obs = env.reset(); buf.add("e", {**obs, "action": np.zeros(1, np.float32), "policy_version": np.int64(0)})
        while not obs["is_last"]:
            a = pol(obs); obs = env.step(a); n += 1
            buf.add("e", {**obs, "action": a, "policy_version": np.int64(0)})
    buf.flush()
    return buf
keys = ("image", "action", "reward", "is_first", "is_terminal")
train = collect(0, int(os.environ.get('STEPS', '5000')))
held = collect(1, 1000).sample(32, cfg.train.batch_length)
fixed_train = train.sample(32, cfg.train.batch_length)
def r2(batch):
    with torch.no_grad():
        d = learner._to_device({k: batch[k] for k in keys})
        with learner.precision.autocast():
            emb = learner.wm.embed(preprocess_image(d["image"]))
            post, _ = learner.wm.rssm.observe(emb, d["action"], d["is_first"])
            pred = learner.wm.reward(RSSM.feat(post))[..., 0].float()
        r = d["reward"].float()
        return float(1 - ((pred - r) ** 2).mean() / r.var())
learner = Learner(cfg, 1, log=lambda s: None)
B, T = cfg.train.batch_size, cfg.train.batch_length
t0 = time.time()
for u in range(1, n_up + 1):
    m = learner.update({k: v for k, v in train.sample(B, T).items() if k in keys})
    if u % 50 == 0:
        print(f"{name} u{u} R2 train {r2(fixed_train):.3f} heldout {r2(held):.3f} "
              f"train_reward_nll {m['model/reward']:.4f} image {m['model/image']-11291.6:.2f} "
              f"kl {m['kl_value']:.2f} {time.time()-t0:.0f}s", flush=True)
