"""The saturated policy's trap: how much of an episode shows the cart, and how much reward
varies while it is out of view (the reward head cannot predict what the pixels do not show)."""
import numpy as np
from diswm.config import load_config
from diswm.envs import make_env

cfg = load_config(["finger_spin_to_cartpole_swingup", "dreamerv2"], ["distraction.enabled=false"])
for a in (-1.0, 1.0, 0.0):
    with make_env(cfg.env, cfg.distraction, seed=0) as env:
        obs = env.reset()
        vis, rew = [], []
        while True:
            obs = env.step(np.full(env.act_space.shape, a, np.float32))
            img = obs["image"].astype(int)  # HWC uint8
            # the cart and pole are orange: red well above blue
            orange = ((img[..., 0] - img[..., 2]) > 60).sum()
            vis.append(orange > 0)
            rew.append(obs["reward"])
            if obs["is_last"]:
                break
        vis, rew = np.array(vis), np.array(rew)
        out = ~vis
        print(f"action {a:+.0f}: {len(vis)} agent steps, cart/pole visible in {vis.mean():.0%}, "
              f"first step out of view {int(np.argmax(out)) if out.any() else None}; "
              f"reward: total {rew.sum():.1f}, while out of view mean {rew[out].mean() if out.any() else float('nan'):.3f} "
              f"std {rew[out].std() if out.any() else float('nan'):.3f}, in view mean {rew[vis].mean():.3f} std {rew[vis].std():.3f}")
