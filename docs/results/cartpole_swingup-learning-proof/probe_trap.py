"""Point 11: the saturated policy's camera trap.

For each constant action, one episode of dmc:cartpole_swingup at 64 x 64 with camera 0 (the
task's default, as DreamerV2 uses): the return, the share of frames that show any of the cart's
or pole's orange pixels, and the reward while nothing of them is visible (what a reward head
cannot predict from those frames).

    .venv/bin/python docs/results/cartpole_swingup-learning-proof/probe_trap.py
"""

import numpy as np

from diswm.envs import make_env
from diswm.presets import load_config

cfg = load_config(["finger_spin_to_cartpole_swingup", "dreamerv2"], ["distraction.enabled=false"])
for action in (-1.0, 1.0, 0.0):
    with make_env(cfg.env, cfg.distraction, seed=0) as env:
        env.reset()
        visible, rewards = [], []
        while True:
            obs = env.step(np.full(env.act_space.shape, action, np.float32))
            img = obs["image"].astype(int)  # H x W x 3, uint8
            orange = ((img[..., 0] - img[..., 2]) > 60).sum()  # cart and pole: red >> blue
            visible.append(orange > 0)
            rewards.append(obs["reward"])
            if obs["is_last"]:
                break
    vis, rew = np.array(visible), np.array(rewards)
    out = ~vis
    first_out = int(np.argmax(out)) if out.any() else None
    hidden = (f"mean {rew[out].mean():.3f} std {rew[out].std():.3f}" if out.any() else "n/a")
    print(f"action {action:+.0f}: {len(vis)} agent steps, cart/pole visible in {vis.mean():.0%}, "
          f"first step out of view {first_out}; reward: total {rew.sum():.1f}, while out of "
          f"view {hidden}, in view mean {rew[vis].mean():.3f} std {rew[vis].std():.3f}")
