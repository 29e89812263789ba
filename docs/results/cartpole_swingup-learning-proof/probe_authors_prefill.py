# ruff: noqa
# Probe script, kept as it was run for this folder's logs (fourteenth session). Run from the repository
# root with the authors' learner exported next to it:
#   git -C <mirror of qiwang067/DisWM> archive 001cc4db4bac063b3fba3ac4716cc33f01d8b114 models.py networks.py tools.py \
#       exploration.py beta_vae.py configs.yaml | tar -x -C /tmp/t14/authors
#   MUJOCO_GL=egl AUTHORS=/tmp/t14/authors .venv/bin/python docs/results/cartpole_swingup-learning-proof/probe_authors_prefill.py NAME UPDATES seed=S
# Their modules import wandb and tensorboard for logging only; both are stubbed. Nothing of
# theirs is copied into this project: the script only imports it to measure it.
# Probe: the authors' released learner (qiwang067/DisWM, DreamerV2 config for DMC) alone on
# 1,000 fixed random-policy agent steps of cartpole_swingup (camera 0, 64x64, action repeat 2),
# as probe_prefill.py does for ours: the actor's mean action on the batch's posterior states.
import os, sys, time, types, re
import numpy as np, torch, yaml
torch.set_num_threads(1)
AUTH = os.environ.get("AUTHORS", "/tmp/t14/authors")
for name in ("wandb",):  # logging only; unused by the training code
    sys.modules[name] = types.ModuleType(name)
tb = types.ModuleType("torch.utils.tensorboard"); tb.SummaryWriter = object
sys.modules["torch.utils.tensorboard"] = tb
sys.path.insert(0, AUTH)
import models, tools  # noqa: E402
from diswm.presets import load_config  # noqa: E402
from diswm.envs import make_env  # noqa: E402
from diswm.rollout import RandomPolicy  # noqa: E402

var = sys.argv[1]; n_up = int(sys.argv[2]); over = dict(a.split("=", 1) for a in sys.argv[3:])
raw = yaml.safe_load(open(f"{AUTH}/configs.yaml"))
conf = {**raw["defaults"], **raw["dmc"]}
SCHED = {"actor_entropy", "actor_state_entropy", "imag_gradient_mix", "kl_balance", "kl_free", "kl_scale"}
def num(k, v):
    if k in SCHED: return str(v)
    if isinstance(v, str) and re.fullmatch(r"[-+]?\d*\.?\d+(e[-+]?\d+)?", v): return float(v)
    return v
conf = {k: num(k, v) for k, v in conf.items()}
conf.update(device="cpu", precision=32, num_actions=1, size=(64, 64), act=torch.nn.ELU,
            cnn_depth=16, dyn_stoch=16, dyn_deter=100, dyn_hidden=100, units=128)
for k, v in over.items():
    conf[k] = num(k, yaml.safe_load(v))
c = types.SimpleNamespace(**conf)
c.actor_entropy = (lambda x=c.actor_entropy: tools.schedule(x, 0))
c.actor_state_entropy = (lambda x=c.actor_state_entropy: tools.schedule(x, 0))
c.imag_gradient_mix = (lambda x=c.imag_gradient_mix: tools.schedule(x, 0))
torch.manual_seed(int(over.get("seed", 0)))

cfg = load_config(["cpu", "finger_spin_to_cartpole_swingup", "dreamerv2"], ["distraction.enabled=false"])
env = make_env(cfg.env, cfg.distraction, seed=0)
pol = RandomPolicy(env.act_space.shape, 0)
episodes, steps = [], 0
while steps < 1000:
    obs = env.reset(); ep = {"image": [obs["image"]], "action": [np.zeros(1, np.float32)], "reward": [0.0]}
    while not obs["is_last"]:
        a = pol(obs); obs = env.step(a); steps += 1
        ep["image"].append(obs["image"]); ep["action"].append(a); ep["reward"].append(float(obs["reward"]))
    episodes.append({k: np.asarray(v, np.float32 if k != "image" else np.uint8) for k, v in ep.items()})
rng = np.random.default_rng(0)
def sample(B=16, T=32):
    out = {k: [] for k in ("image", "action", "reward")}
    for _ in range(B):
        ep = episodes[rng.integers(len(episodes))]; s = rng.integers(0, len(ep["reward"]) - T + 1)
        for k in out: out[k].append(ep[k][s:s + T])
    d = {k: np.stack(v) for k, v in out.items()}
    d["discount"] = np.ones_like(d["reward"])
    return d

wm = models.WorldModel(0, c)
beh = models.ImagBehavior(c, wm, c.behavior_stop_grad)
wm.requires_grad_(False); beh.requires_grad_(False)
reward_fn = lambda f, s, a: wm.heads["reward"](wm.dynamics.get_feat(s)).mode()
t0 = time.time()
for u in range(1, n_up + 1):
    if u == 1:  # dreamer-torch trains `pretrain` (100) updates at the first call: same loop
        pass
    data = sample()
    post, context, mets = wm._train(data)
    _, _, _, _, bm = beh._train(post, reward_fn)
    if u % 20 == 0:
        with torch.no_grad():
            d = wm.preprocess(sample())
            p, _ = wm.dynamics.observe(wm.encoder(d), d["action"])
            dist = beh.actor(wm.dynamics.get_feat(p))
            mean = dist._dist.base_dist._loc if hasattr(dist._dist.base_dist, "_loc") else dist.mean
            std = dist._dist.base_dist.scale
        print(f"{var} u{u} ent {float(bm['actor_ent']):.3f} imr {float(bm['reward_mean']):.3f} "
              f"mean+ {(mean > 0).float().mean():.2f} |mean| {mean.abs().mean():.2f} std {std.mean():.2f} "
              f"rew {float(mets['reward_loss']):.3f} img {float(mets['image_loss']):.1f} kl {float(mets['kl']):.2f} "
              f"{time.time() - t0:.0f}s", flush=True)
