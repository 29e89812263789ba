"""The DisWM learner's training logic, without Ray (sample-factory's learner / acme's Learner).

The loop it lives in (the serial runner and the Ray actor wrap the same class)::

    learner = Learner(cfg, action_dim=6)              # teacher from cfg.distill.teacher, if any
    while True:
        metrics = learner.update(replay.sample(B, T), agent_step=agent_steps)
        version, weights = learner.get_weights("policy")   # broadcast to actors' Policy
        learner.save(run_dir / "learner.pt")               # resume exactly with restore()

One update (DreamerV2 Algorithm 1 + DisWM's loss): world-model step on the batch (with eta *
L_distill from the frozen teacher), then the actor and critic steps in imagination from the
batch's posterior states. Three named Adam groups: "model", "actor", "critic".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from diswm.agent.teacher import FIELD as TEACHER_FIELD
from diswm.atomic import atomic_file
from diswm.checkpoints import load_checkpoint
from diswm.config import Config, build_config, replace
from diswm.hostmem import reuse_freed_memory
from diswm.models import (
    ActorCritic,
    WorldModel,
    combine,
    eta_at,
    frozen,
    load_pretrained,
    make_teacher,
)
from diswm.models.compiled import Compiled
from diswm.models.fastconv import set_fast
from diswm.models.losses import distill_kl
from diswm.models.nets import BetaVAEEncoder, preprocess_image, resolve_device
from diswm.models.optim import Adam
from diswm.models.precision import Group, resolve_precision, step_if_finite

CHECKPOINT_FORMAT = "diswm-learner-v1"
BATCH_KEYS = ("image", "action", "reward", "is_first", "is_terminal")
#: Prefixes of the weights an actor's Policy needs.
POLICY_PREFIXES = ("wm.encoder.", "wm.rssm.", "ac.actor.")
#: The metrics `ActorCritic.loss` reports (NaN during `behaviour.warmup_updates`).
BEHAVIOUR_METRICS = ("imag_reward", "return", "actor_entropy", "value")



class Learner:
    """World model + actor-critic + their optimizers + counters; `update`, weights, save/restore."""

    def __init__(self, cfg: Config, action_dim: int, *,
                 pretrained: Mapping[str, Tensor] | None = None,
                 device: str | torch.device | None = None,
                 log: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.action_dim = int(action_dim)
        self.device = torch.device(device) if device is not None else resolve_device(cfg.train.device)
        if cfg.train.reuse_host_memory:
            reuse_freed_memory()  # large activations: no page faults every update (hostmem.py)
        torch.manual_seed(cfg.train.seed)
        size = cfg.env.size
        self.wm = WorldModel(cfg.model, action_dim, size).to(self.device)
        self.ac = ActorCritic(cfg.behaviour, self.wm.rssm.feat_dim, action_dim,
                              cfg.model.units).to(self.device)
        if pretrained is None and cfg.distill.teacher and (cfg.distill.enabled
                                                          or cfg.distill.finetune):
            pretrained = load_pretrained(cfg.distill.teacher)
        self.teacher: BetaVAEEncoder | None = None
        if pretrained is not None and cfg.distill.enabled:
            self.teacher = make_teacher(cfg.model, pretrained, size).to(self.device)
        if pretrained is not None and cfg.distill.finetune:
            self._load_finetune(pretrained)
        self.channels_last = cfg.train.channels_last
        if self.channels_last and cfg.train.compile and self.device.type == "cuda":
            # Inductor (torch 2.11, H200) lowers the channels-last convolution backward with
            # NCHW strides and fails in the backward; eager channels-last gained 5% there.
            self.channels_last = False
            (log or print)("train.channels_last: off with train.compile on CUDA (inductor's "
                           "channels-last convolution backward fails)")
        if self.channels_last:
            for m in (self.wm.encoder, self.wm.decoder, self.teacher):
                if m is not None:
                    m.channels_last = True
                    m.to(memory_format=torch.channels_last)
        for m in (self.wm, self.teacher):
            if m is not None:
                set_fast(m, cfg.train.fast_convs)
        self.log = log or (lambda msg: None)
        # Hot paths (diswm/models/compiled.py): eager unless train.compile; the first update
        # compiles them, and its time is kept apart (compile_seconds).
        mode = cfg.train.compile_mode
        if mode == "reduce-overhead" and self.device.type != "cuda":
            mode = "default"  # CUDA graphs need CUDA; inductor's CPU code is the same otherwise
        self._cudagraphs = cfg.train.compile and mode == "reduce-overhead"
        self._wm_loss = Compiled(self.wm.loss, "world-model loss", log=self.log,
                                 enabled=cfg.train.compile, mode=mode)
        self._ac_loss = Compiled(self.ac.loss, "actor-critic loss", log=self.log,
                                 enabled=cfg.train.compile, mode=mode)
        o = cfg.optim
        fused = self.device.type == "cuda"  # one kernel per step on a GPU

        def adam(module: nn.Module, lr: float) -> Adam:
            return Adam(module.parameters(), lr=lr, eps=o.eps, eps_form=o.adam_eps,
                        weight_decay=o.weight_decay, fused=fused)

        self.opts = {"model": adam(self.wm, o.model_lr), "actor": adam(self.ac.actor, o.actor_lr),
                     "critic": adam(self.ac.critic, o.critic_lr)}
        self.updates = 0  # gradient updates done
        self.skipped_updates = 0  # updates (or their behaviour step) skipped: loss not finite
        self.version = 0  # policy version: bumped by every update and set_weights
        self.agent_step = 0  # agent steps seen (drives eta)
        self.scheme = cfg.distraction.scheme  # colour scheme phase of the run
        self.precision = resolve_precision(cfg.train.precision, self.device)
        # fp16: the world model's loss (image NLL summed over 64x64x3 pixels, ~1e4) has gradients
        # far above fp16's underflow and overflows it when scaled up (PyTorch's 2**16 skipped its
        # first update on an H100; inf down to a scale of 128 in CPU emulation), so its scaler
        # starts at 1 and grows from there; the actor's and critic's small losses keep 2**16.
        self.scalers = {name: self.precision.make_scaler(1.0 if name == "model" else 2.0 ** 16)
                        for name in self.opts}
        self.log(self.precision.describe())
        self._staging: dict[str, Tensor] = {}  # pinned host buffers for batches (CUDA)
        self._staged = None  # CUDA event: the last host -> device copy out of the staging
        # PyTorch's OpenMP runtime (libgomp) keeps a worker pool per calling thread. Once two
        # threads of a process have run parallel ops, libgomp counts more pool threads than
        # cores and stops spinning at its barriers: every op then sleeps and wakes (measured
        # 0.29 -> 0.47 s per update at the `cpu` size on 2 cores). So the thread that builds
        # the learner is the one that should train it; `update` says so once if not.
        self.built_on = threading.get_ident()
        self._thread_warned = False

    # -- training ---------------------------------------------------------------------------
    def eta(self) -> float | None:
        """Current distillation weight, or None when there is no teacher (no term at all)."""
        return None if self.teacher is None else eta_at(self.agent_step, self.cfg.distill)

    def update(self, batch: Mapping[str, Any], agent_step: int | None = None, *,
               diagnostics: bool = False) -> dict[str, float]:
        """One world-model step and one actor-critic step on a (B, T) batch; returns metrics.

        Call it on the thread that built the learner (see `built_on`).

        `diagnostics` adds ``distill_grad_share``: the norm of the distillation term's gradient
        on the student encoder over the norm of the whole world-model loss's gradient there
        (an extra backward through the encoder; runners ask for it on the updates they log)."""
        start_time = time.perf_counter()
        if not self._thread_warned and threading.get_ident() != self.built_on:
            self._thread_warned = True
            if self.device.type == "cpu" and torch.get_num_threads() > 1:
                self.log("learner: update() runs on another thread than the one that built the "
                         "learner; OpenMP then keeps a worker pool for each and every parallel op "
                         "sleeps and wakes (about 1.5x slower on CPU): build and train on one "
                         "thread")
        if self._cudagraphs:  # a new iteration: the graphs' previous outputs may be reused
            torch.compiler.cudagraph_mark_step_begin()
        if agent_step is not None:
            self.agent_step = int(agent_step)
        data = self._to_device(batch)
        eta = self.eta()
        metrics: dict[str, Tensor] = {}
        data["image"] = preprocess_image(data["image"])  # once: teacher, student, image loss
        wm_losses, aux, wm_loss, z_teacher = self._world_model_losses(data, eta)
        share = None
        if diagnostics and "distill" in wm_losses:
            if eta:
                share = self._distill_share(eta, wm_losses["distill"], aux["z_student"],
                                            data["image"], z_teacher)
            else:  # eta is 0 before a delayed start (Pusher): the term has no gradient
                metrics["distill_grad_share"] = torch.zeros(())
        norms, stepped = step_if_finite({"model": self._group("model", wm_loss, self.wm)},
                                        self.cfg.optim.grad_clip)
        if not stepped:  # a NaN/inf loss or gradient: nothing changes, the update is not done
            self.skipped_updates += 1
            self.log(f"update {self.updates + 1} skipped: the world model's loss or gradients "
                     f"are not finite ({self.skipped_updates} skipped in all)")
            return self._metrics(start_time, eta, metrics, norms, wm_losses, aux, wm_loss,
                                 *self._no_behaviour(norms), skipped=True)
        if share is not None:
            enc = torch.stack([p.grad.float().norm() for p in self.wm.encoder.parameters()
                               if p.grad is not None]).norm()
            # The step clipped the gradients by min(1, clip / norm): undo it for the ratio.
            clip = min(1.0, self.cfg.optim.grad_clip / (float(norms["model"]) + 1e-6))
            metrics["distill_grad_share"] = share / (enc / clip).clamp_min(1e-12)
        if self.updates >= self.cfg.behaviour.warmup_updates:
            self.ac.update_slow_critic(self.updates - self.cfg.behaviour.warmup_updates)
            actor_losses, critic_losses, ac_metrics, actor_loss, critic_loss = (
                self._behaviour_losses(aux, data))
            # One backward for both: their parameters and graphs are disjoint.
            ac_norms, stepped = step_if_finite({
                "actor": self._group("actor", actor_loss, self.ac.actor),
                "critic": self._group("critic", critic_loss, self.ac.critic)},
                self.cfg.optim.grad_clip)
            norms.update(ac_norms)
            if not stepped:  # the world model stepped; the behaviour keeps its weights
                self.skipped_updates += 1
                self.log(f"update {self.updates + 1}: the actor-critic step is skipped, its "
                         f"loss or gradients are not finite ({self.skipped_updates} skipped in "
                         "all)")
        else:  # world-model warm-up: the behaviour's metrics are NaN (same columns every row)
            actor_losses, critic_losses, ac_metrics, actor_loss, critic_loss = (
                self._no_behaviour(norms))
        self.updates += 1
        self.version += 1
        return self._metrics(start_time, eta, metrics, norms, wm_losses, aux, wm_loss,
                             actor_losses, critic_losses, ac_metrics, actor_loss, critic_loss,
                             skipped=not stepped)

    def _no_behaviour(self, norms: dict[str, Tensor]):
        """The behaviour's metrics when it did not train this update (warm-up, or a skipped
        update): NaN, so every row has the same columns."""
        nan = torch.full((), float("nan"))
        norms.update({"actor": nan, "critic": nan})
        return (dict.fromkeys(self.ac.actor_scales(), nan),
                dict.fromkeys(self.ac.critic_scales(), nan),
                dict.fromkeys(BEHAVIOUR_METRICS, nan), nan, nan)

    def _metrics(self, start_time, eta, metrics, norms, wm_losses, aux, wm_loss, actor_losses,
                 critic_losses, ac_metrics, actor_loss, critic_loss, *, skipped: bool):
        metrics.update({f"{name}_grad_norm": norm for name, norm in norms.items()})
        for prefix, terms in (("model", wm_losses), ("actor", actor_losses),
                              ("critic", critic_losses)):
            metrics.update({f"{prefix}/{k}": v for k, v in terms.items()})
        metrics.update({"model_loss": wm_loss, "actor_loss": actor_loss,
                        "critic_loss": critic_loss, "kl_value": aux["kl_value"], **ac_metrics})
        if "z_std" in aux:
            metrics["z_std"] = aux["z_std"]
        # One device -> host copy for every metric (a sync per .item() would stall a GPU).
        names = list(metrics)
        values = torch.stack([metrics[k].detach().float().reshape(()) for k in names]).tolist()
        out = dict(zip(names, values, strict=True))
        out.update({"eta": float(eta or 0.0), "updates": float(self.updates),
                    "skipped": float(skipped), "skipped_updates": float(self.skipped_updates),
                    "update_seconds": time.perf_counter() - start_time})
        return out

    def _world_model_losses(self, data: dict[str, Tensor], eta: float | None):
        with self.precision.autocast():
            z_teacher = None
            if self.teacher is not None and TEACHER_FIELD in data:
                z_teacher = data[TEACHER_FIELD]  # stored by the actors (diswm/agent/teacher.py)
            elif self.teacher is not None:
                with torch.no_grad():
                    # Contiguous, as stored latents arrive: the compiled loss is specialised to
                    # its inputs' strides, and a warm-up on these must serve stored ones too.
                    z_teacher = self.teacher(data["image"], sample=False)[0].contiguous()
            wm_losses, aux = self._wm_loss(data, z_teacher_BTZ=z_teacher,
                                           distill_reduction=self.cfg.distill.reduction)
            wm_loss = combine(wm_losses, self.wm.scales(eta=eta))
        return wm_losses, aux, wm_loss, z_teacher

    def _behaviour_losses(self, aux: dict, data: dict[str, Tensor]):
        start = self.wm.imagine_start(aux["post"])
        with frozen(self.wm), self.precision.autocast():
            actor_losses, critic_losses, ac_metrics = self._ac_loss(
                self.wm, start, data["is_terminal"].reshape(-1))
            actor_loss = combine(actor_losses, self.ac.actor_scales())
            critic_loss = combine(critic_losses, self.ac.critic_scales())
        return actor_losses, critic_losses, ac_metrics, actor_loss, critic_loss

    def warm_up(self) -> float:
        """Compile the hot paths now (with `train.compile`), on a synthetic batch of the run's
        shapes: forward and backward through both regions, no optimizer step, gradients
        cleared, the RNG state restored, so weights, optimizer state and the random stream are
        exactly as before. A distributed learner calls this before its actors start, so the
        minutes a cold compile takes do not stall them on the rate limiter. Returns seconds."""
        if self._wm_loss.state != "pending" and self._ac_loss.state != "pending":
            return 0.0
        start_time = time.perf_counter()
        t, size = self.cfg.train, self.cfg.env.size
        first = np.zeros((t.batch_size, t.batch_length), bool)
        first[:, 0] = True
        batch = {"image": np.zeros((t.batch_size, t.batch_length, size, size, 3), np.uint8),
                 "action": np.zeros((t.batch_size, t.batch_length, self.action_dim), np.float32),
                 "reward": np.zeros((t.batch_size, t.batch_length), np.float32),
                 "is_first": first, "is_terminal": np.zeros_like(first)}
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            data = self._to_device(batch)
            data["image"] = preprocess_image(data["image"])
            _, aux, wm_loss, _ = self._world_model_losses(data, self.eta())
            wm_loss.backward()
            *_, actor_loss, critic_loss = self._behaviour_losses(aux, data)
            (actor_loss + critic_loss).backward()
        for opt in self.opts.values():
            opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start_time

    def _distill_share(self, eta: float, distill: Tensor, z_student: Tensor, image: Tensor,
                       z_teacher: Tensor) -> Tensor:
        """Norm of the gradient of eta * L_distill on the student encoder's parameters.

        Eager: exactly the term of this update (autograd.grad, the graph kept for the step). A
        compiled world-model loss cannot be differentiated twice, so there the term is recomputed
        eagerly through the encoder alone, with fresh noise for the sampled z (the same term in
        distribution; a diagnostic, not the step)."""
        params = [p for p in self.wm.encoder.parameters() if p.requires_grad]
        if self._wm_loss.state == "compiled":
            with self.precision.autocast():
                z = self.wm.encoder.embed(image)
                per_step_BT = distill_kl(z_teacher, z)
                distill = (per_step_BT.sum(1).mean() if self.cfg.distill.reduction == "batchmean"
                           else per_step_BT.mean())
            grads = torch.autograd.grad(eta * distill, params, allow_unused=True)
        else:
            grads = torch.autograd.grad(eta * distill, params, retain_graph=True,
                                        allow_unused=True)
        return torch.stack([g.float().norm() for g in grads if g is not None]).norm()

    @property
    def compile_seconds(self) -> float:
        """Time the first update spent compiling (0 when nothing was compiled)."""
        return self._wm_loss.compile_seconds + self._ac_loss.compile_seconds

    def _group(self, name: str, loss: Tensor, module: nn.Module) -> Group:
        return Group(self.opts[name], loss, list(module.parameters()), self.scalers[name])

    def _to_device(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        missing = [k for k in BATCH_KEYS if k not in batch]
        if missing:
            raise KeyError(f"batch lacks keys {missing}; it has {sorted(batch)}")
        out = {}
        cuda = self.device.type == "cuda"
        if cuda and self._staged is not None:
            self._staged.synchronize()  # the previous batch has left the staging buffers
        for key in BATCH_KEYS:
            value = batch[key]
            t = torch.as_tensor(np.asarray(value)) if not isinstance(value, Tensor) else value
            if key in ("action", "reward"):
                t = t.float()
            elif key in ("is_first", "is_terminal"):
                t = t.bool()
            if cuda and t.device.type == "cpu":
                # Pinned staging, reused across batches: the copy to the GPU is asynchronous.
                buf = self._staging.get(key)
                if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
                    buf = self._staging[key] = torch.empty(t.shape, dtype=t.dtype,
                                                           pin_memory=True)
                buf.copy_(t)
                t = buf
            out[key] = t.to(self.device, non_blocking=True)
        if cuda:
            self._staged = torch.cuda.Event()
            self._staged.record()
        if out["image"].dtype != torch.uint8 or out["image"].ndim != 5:
            raise ValueError(f"batch image must be uint8 (B, T, H, W, C), got "
                             f"{out['image'].dtype} {tuple(out['image'].shape)}")
        if self.teacher is not None and TEACHER_FIELD in batch:
            z = torch.as_tensor(np.asarray(batch[TEACHER_FIELD]), dtype=torch.float32)
            want = (*out["image"].shape[:2], self.cfg.model.z_dim)
            if tuple(z.shape) != want:
                raise ValueError(f"batch z_teacher must be float32 {want} (B, T, model.z_dim), "
                                 f"got {tuple(z.shape)}")
            out[TEACHER_FIELD] = z.to(self.device, non_blocking=True).contiguous()
        return out

    def _load_finetune(self, pretrained: Mapping[str, Tensor]) -> None:
        """DV2-finetune: load the pretrained encoder, RSSM and decoder. Every pretrained weight
        must fit; only the RSSM's action projection (absent from the action-free video model)
        stays freshly initialised."""
        own = self.wm.state_dict()
        take, misfit = {}, []
        for k, v in pretrained.items():
            if k.split(".")[0] not in ("encoder", "rssm", "decoder"):
                continue
            if k in own and own[k].shape == v.shape:
                take[k] = v
            else:
                misfit.append(f"{k} {tuple(v.shape)} vs "
                              f"{tuple(own[k].shape) if k in own else 'absent'}")
        fresh = sorted(k for k in own if k.split(".")[0] in ("encoder", "rssm", "decoder")
                       and k not in take)
        if misfit or any(not k.startswith("rssm.img_in_action.") for k in fresh):
            raise ValueError(
                f"distill.finetune: the pretrained model does not fit this world model "
                f"(model.encoder={self.cfg.model.encoder}): "
                + "; ".join((misfit or [f"missing {k}" for k in fresh])[:3]))
        self.wm.load_state_dict(take, strict=False)

    # -- weights ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """Every trainable module's weights, keys prefixed "wm." and "ac."."""
        out = {f"wm.{k}": v for k, v in self.wm.state_dict().items()}
        out.update({f"ac.{k}": v for k, v in self.ac.state_dict().items()})
        return out

    def get_weights(self, scope: str = "all") -> tuple[int, dict[str, Tensor]]:
        """(version, CPU copies of the weights); scope "policy" keeps what a Policy needs."""
        if scope not in ("all", "policy"):
            raise ValueError(f"scope must be 'all' or 'policy', got {scope!r}")
        state = self.state_dict()
        if scope == "policy":
            state = {k: v for k, v in state.items() if k.startswith(POLICY_PREFIXES)}
        return self.version, {k: v.detach().to("cpu", copy=True) for k, v in state.items()}

    def set_weights(self, version: int, state: Mapping[str, Tensor]) -> None:
        """Load a full state dict from `get_weights("all")` and take its version."""
        self.wm.load_state_dict({k[3:]: v for k, v in state.items() if k.startswith("wm.")})
        self.ac.load_state_dict({k[3:]: v for k, v in state.items() if k.startswith("ac.")})
        self.version = int(version)

    # -- checkpoints ------------------------------------------------------------------------
    def save(self, path: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
        """Everything needed to resume exactly; `extra` holds a runner's plain state."""
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        payload = {
            "format": CHECKPOINT_FORMAT, "config": self.cfg.to_dict(),
            "action_dim": self.action_dim,
            "wm": self.wm.state_dict(), "ac": self.ac.state_dict(),
            "teacher": None if self.teacher is None else {
                f"encoder.{k}": v for k, v in self.teacher.state_dict().items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.opts.items()},
            "scalers": {name: sc.state_dict() for name, sc in self.scalers.items() if sc},
            "counters": {"updates": self.updates, "version": self.version,
                         "agent_step": self.agent_step, "skipped_updates": self.skipped_updates},
            "scheme": self.scheme, "rng": rng, "extra": dict(extra or {}),
        }
        with atomic_file(path) as f:
            torch.save(payload, f)
        return Path(path)

    def restore(self, path: str | Path) -> dict[str, Any]:
        """Load a `save`d checkpoint (weights_only: no unpickling); returns its `extra`."""
        payload = load_checkpoint(path, "learner checkpoint")
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
        self.wm.load_state_dict(payload["wm"])
        self.ac.load_state_dict(payload["ac"])
        if payload["teacher"] is not None:
            if self.teacher is None:
                self.teacher = make_teacher(self.cfg.model, payload["teacher"],
                                            self.cfg.env.size).to(self.device)
            else:
                self.teacher.load_state_dict({k[len("encoder."):]: v
                                              for k, v in payload["teacher"].items()})
        for name, opt in self.opts.items():
            opt.load_state_dict(payload["optimizers"][name])
        for name, state in payload.get("scalers", {}).items():
            if self.scalers.get(name) is not None:  # fp16 then and now
                self.scalers[name].load_state_dict(state)
        counters = payload["counters"]
        self.updates, self.version = int(counters["updates"]), int(counters["version"])
        self.agent_step = int(counters["agent_step"])
        self.skipped_updates = int(counters.get("skipped_updates", 0))
        self.scheme = str(payload["scheme"])
        torch.set_rng_state(payload["rng"]["torch"])
        if "cuda" in payload["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
        return payload["extra"]

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | None = None,
                        log: Callable[[str], None] | None = None) -> tuple[Learner, dict]:
        """A learner rebuilt from the config and teacher stored in a checkpoint, restored."""
        payload = load_checkpoint(path, "learner checkpoint")
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
        cfg = build_config(payload["config"])
        if payload["teacher"] is None:  # nothing to rebuild; do not look for the original file
            cfg = replace(cfg, distill={"teacher": ""})
        learner = cls(cfg, payload["action_dim"], pretrained=payload["teacher"], device=device,
                      log=log)
        return learner, learner.restore(path)
