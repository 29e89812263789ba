"""Train the action-free video model on a collected dataset and write the teacher checkpoint.

    diswm pretrain train --data data/cheetah [--out RUN_DIR] [--resume RUN_DIR] [--config ...]

Run folder::

    config.yaml             the resolved config (Config.load reads it back)
    data.json               the dataset used: folder, task, frames, shard checksums
    checkpoints/latest.pt   model + optimizer + counters + RNG states + loss history (exact resume)
    train.csv               one row per update: losses, KL value, grad norm, seconds
    loss.png                loss curves
    teacher.pt              {"format", "video_model": state dict, "config", "updates", ...}:
                            what online training loads (diswm.models.video.load_pretrained)
    summary.json            updates, final losses, wall time

One update: B sequences of T frames sampled uniformly within episodes, VideoModel.loss, the
configured scales (image, kl, beta = pretrain.beta), Adam(pretrain.lr, eps=optim.eps), gradient
norm clipped at optim.grad_clip. Resume restores weights, optimizer, update count, the torch and
numpy generators and the loss history, so a resumed run continues exactly where the checkpoint
left off (the same batches, the same weights as an uninterrupted run on the same machine).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diswm.atomic import atomic_file, atomic_write
from diswm.checkpoints import load_checkpoint
from diswm.config import Config
from diswm.hostmem import reuse_freed_memory
from diswm.models.losses import combine
from diswm.models.nets import resolve_device
from diswm.models.precision import Group, backward_and_step, resolve_precision
from diswm.models.video import VideoModel, video_scales
from diswm.runfolder import private_dir
from pretrain.dataset import VideoDataset

FORMAT = "diswm-pretrain-v1"
TEACHER_FORMAT = "diswm-teacher-v1"
CHECKPOINT = Path("checkpoints") / "latest.pt"
TEACHER = "teacher.pt"
COLUMNS = ("update", "loss", "image", "kl", "beta", "kl_value", "z_std", "grad_norm", "seconds")



def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_file(path) as f:
        torch.save(obj, f)


def _atomic_text(path: Path, text: str) -> None:
    atomic_write(path, text)


class PretrainRunner:
    """The training loop around one VideoModel; `run()` trains to `pretrain.updates`."""

    def __init__(self, cfg: Config, run_dir: str | Path, *, data: str | Path | None = None,
                 resume: bool = False, progress: Callable[[str], None] | None = None):
        self.run_dir = Path(run_dir)
        self.progress = progress or (lambda msg: None)
        if resume:
            if not (self.run_dir / CHECKPOINT).exists():
                raise ValueError(f"--resume {run_dir}: no {CHECKPOINT} to resume from")
            cfg = Config.load(self.run_dir / "config.yaml")
            recorded = json.loads((self.run_dir / "data.json").read_text())
            data = data or recorded["folder"]
        elif data is None:
            raise ValueError("no dataset: pass --data DIR")
        elif (self.run_dir / CHECKPOINT).exists():
            raise ValueError(f"--out {run_dir} already holds a run; use --resume {run_dir} to "
                             "continue it, or a new folder")
        self.cfg = cfg
        self.data = VideoDataset.load(data)
        manifest = self.data.manifest
        data_info = {"folder": str(Path(data).resolve()), "task": manifest["task"],
                     "scheme": manifest["scheme"], "frames": self.data.frames,
                     "episodes": len(self.data.episodes),
                     "checksums": [e["checksum"] for e in manifest["shards"]]}
        if resume and data_info["checksums"] != recorded["checksums"]:
            raise ValueError(f"dataset {data} differs from the one this run trained on "
                             f"({recorded['folder']}): shard checksums do not match")
        if self.data.size != cfg.env.size:
            raise ValueError(f"dataset {data} has {self.data.size}px frames but env.size is "
                             f"{cfg.env.size}")
        self.data.check_length(cfg.pretrain.batch_length)
        self.data_info = data_info

        self.device = resolve_device(cfg.train.device)
        if cfg.train.reuse_host_memory:
            reuse_freed_memory()  # large activations: no page faults every update (hostmem.py)
        torch.manual_seed(cfg.pretrain.seed)
        self.model = VideoModel(cfg.model, size=cfg.env.size).to(self.device)
        if cfg.train.channels_last:
            for m in (self.model.encoder, self.model.decoder):
                m.channels_last = True
                m.to(memory_format=torch.channels_last)
        # The same precision as the online learner (train.precision; precision.py).
        self.precision = resolve_precision(cfg.train.precision, self.device)
        self.scaler = self.precision.make_scaler()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.pretrain.lr, eps=cfg.optim.eps)
        self.scales = video_scales(cfg.model, beta=cfg.pretrain.beta)
        self.rng = np.random.default_rng([cfg.pretrain.seed, 0xDA7A])
        self.updates = 0
        self.history: list[dict[str, float]] = []
        self.seconds = 0.0  # training wall time over all sessions
        if resume:
            self._restore()
            self.progress(f"resumed {self.run_dir} at update {self.updates}")
        else:
            private_dir(self.run_dir)
            cfg.save(self.run_dir / "config.yaml")
            _atomic_text(self.run_dir / "data.json", json.dumps(data_info, indent=1) + "\n")

    # -- training ---------------------------------------------------------------------------
    def update(self) -> dict[str, float]:
        p = self.cfg.pretrain
        start = time.perf_counter()
        batch = self.data.sample(self.rng, p.batch_size, p.batch_length)
        image = torch.as_tensor(batch["image"], device=self.device)
        is_first = torch.as_tensor(batch["is_first"], device=self.device)
        self.model.train()
        with self.precision.autocast():
            losses, aux = self.model.loss(image, is_first, balance=self.cfg.model.kl_balance,
                                          free=self.cfg.model.kl_free)
            loss = combine(losses, self.scales)
        grad_norm = backward_and_step(
            {"model": Group(self.opt, loss, list(self.model.parameters()), self.scaler)},
            self.cfg.optim.grad_clip)["model"]
        self.updates += 1
        z_std = float("nan")  # DreamerV2's conv encoder (DV2-finetune) has no z
        if self.model.beta_vae:
            with torch.no_grad(), self.precision.autocast():
                _, logvar, _ = self.model.encoder(image[:, :1], sample=False)
                z_std = float(torch.exp(0.5 * logvar).mean())
        row = {"update": self.updates, "loss": float(loss.detach()),
               "beta": 0.0, **{k: float(v.detach()) for k, v in losses.items()},
               "kl_value": float(aux["kl_value"]), "z_std": z_std,
               "grad_norm": float(grad_norm), "seconds": time.perf_counter() - start}
        self.history.append(row)
        return row

    def run(self, stop_at: int | None = None) -> dict[str, Any]:
        """Train to `pretrain.updates` (or stop after `stop_at` updates, leaving a resumable
        run); returns the summary (also written to summary.json when finished)."""
        p = self.cfg.pretrain
        end = min(p.updates, stop_at) if stop_at is not None else p.updates
        self.progress(f"pretraining on {self.data.frames} frames ({len(self.data.episodes)} "
                      f"episodes of {self.data_info['task']}), beta_2={p.beta}, "
                      f"{p.batch_size}x{p.batch_length} batches, {p.updates} updates, "
                      f"device {self.device}")
        self.progress(self.precision.describe())
        session_start, session_updates = time.perf_counter(), 0
        try:
            while self.updates < end:
                row = self.update()
                session_updates += 1
                if self.updates % p.log_every == 0 or self.updates == end:
                    elapsed = time.perf_counter() - session_start
                    rate = session_updates / elapsed
                    recent = self.history[-p.log_every:]
                    mean = {k: np.mean([r[k] for r in recent]) for k in ("loss", "image", "kl",
                                                                        "beta")}
                    self.progress(
                        f"update {self.updates}/{p.updates}  loss {mean['loss']:.1f} (image "
                        f"{mean['image']:.1f}, kl {mean['kl']:.2f}, beta-KL {mean['beta']:.2f}) "
                        f"z_std {row['z_std']:.2f}  {rate:.2f} upd/s  "
                        f"eta {(p.updates - self.updates) / max(rate, 1e-9) / 60:.1f} min")
                if self.updates % p.checkpoint_every == 0:
                    self.save(time.perf_counter() - session_start)
                    session_start, session_updates = time.perf_counter(), 0
        except KeyboardInterrupt:
            self.save(time.perf_counter() - session_start)
            self.progress(f"interrupted: checkpoint at update {self.updates} in "
                          f"{self.run_dir / CHECKPOINT}; continue with --resume {self.run_dir}")
            raise
        self.save(time.perf_counter() - session_start)
        self.plot()
        if self.updates < p.updates:
            return {"updates": self.updates, "finished": False}
        teacher = self.write_teacher()
        summary = self.summary()
        summary["teacher"] = str(teacher)
        _atomic_text(self.run_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
        self.progress(f"wrote {teacher} and {self.run_dir / 'loss.png'}")
        return summary

    def summary(self) -> dict[str, Any]:
        last = self.history[-min(len(self.history), max(self.cfg.pretrain.log_every, 10)):]
        first = self.history[:len(last)]
        mean = lambda rows, k: float(np.mean([r[k] for r in rows])) if rows else None  # noqa: E731
        return {"run_dir": str(self.run_dir), "task": self.data_info["task"],
                "frames": self.data.frames, "updates": self.updates,
                "beta": self.cfg.pretrain.beta, "finished": self.updates >= self.cfg.pretrain.updates,
                "first_loss": mean(first, "loss"), "final_loss": mean(last, "loss"),
                "final_image": mean(last, "image"), "final_kl": mean(last, "kl"),
                "final_beta_kl": mean(last, "beta"), "wall_seconds": self.seconds}

    # -- checkpoints ------------------------------------------------------------------------
    def save(self, session_seconds: float = 0.0) -> Path:
        self.seconds += session_seconds
        payload = {
            "format": FORMAT, "config": self.cfg.to_dict(),
            "video_model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "updates": self.updates, "seconds": self.seconds,
            "rng": {"torch": torch.get_rng_state(),
                    "numpy": json.dumps(self.rng.bit_generator.state)},
            "history": {k: [float(r[k]) for r in self.history] for k in COLUMNS},
        }
        path = self.run_dir / CHECKPOINT
        _atomic_torch_save(payload, path)
        with (self.run_dir / "train.csv.tmp").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
            writer.writeheader()
            writer.writerows(self.history)
        (self.run_dir / "train.csv.tmp").replace(self.run_dir / "train.csv")
        return path

    def _restore(self) -> None:
        payload = load_checkpoint(self.run_dir / CHECKPOINT, "pretraining checkpoint")
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"{self.run_dir / CHECKPOINT}: not a {FORMAT} checkpoint")
        self.model.load_state_dict(payload["video_model"])
        self.opt.load_state_dict(payload["optimizer"])
        if self.scaler is not None and payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        self.updates = int(payload["updates"])
        self.seconds = float(payload["seconds"])
        torch.set_rng_state(payload["rng"]["torch"])
        self.rng.bit_generator.state = json.loads(payload["rng"]["numpy"])
        hist = payload["history"]
        self.history = [{k: hist[k][i] for k in COLUMNS} for i in range(len(hist["update"]))]

    def write_teacher(self) -> Path:
        """teacher.pt: the video model's weights plus plain metadata (weights_only-loadable)."""
        payload = {"format": TEACHER_FORMAT, "video_model": self.model.state_dict(),
                   "config": self.cfg.to_dict(), "updates": self.updates,
                   "beta": self.cfg.pretrain.beta, "z_dim": self.cfg.model.z_dim,
                   "size": self.cfg.env.size,
                   "data": {k: v for k, v in self.data_info.items() if k != "checksums"}}
        path = self.run_dir / TEACHER
        _atomic_torch_save(payload, path)
        return path

    def plot(self) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = self.run_dir / "loss.png"
        fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
        x = np.array([r["update"] for r in self.history])
        window = max(1, len(x) // 50)
        for ax, key, title in zip(axes, ("loss", "image", "kl_value", "beta"),
                                  ("total loss", "image NLL", "KL(post || prior)",
                                   "KL(q(z|o) || N(0, I))"), strict=True):
            y = np.array([r[key] for r in self.history])
            ax.plot(x, y, alpha=0.3, color="tab:blue")
            if window > 1:
                smooth = np.convolve(y, np.ones(window) / window, mode="valid")
                ax.plot(x[window - 1:], smooth, color="tab:blue")
            ax.set_title(title)
            ax.set_xlabel("update")
        fig.suptitle(f"{self.data_info['task']}  beta_2={self.cfg.pretrain.beta}  "
                     f"{self.data.frames} frames")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


__all__ = ["CHECKPOINT", "TEACHER", "PretrainRunner"]
