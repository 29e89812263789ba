"""The frozen teacher's latents, computed once per frame where the frame is made.

DisWM distils the teacher's latent of every frame into the student encoder (L_distill). The
teacher is frozen and deterministic (its encoder's mean), so a frame's teacher latent never
changes; the learner would otherwise encode each stored frame again every time a batch holds it
(`train.batch_size * train.batch_length / train.train_every` frames per agent step: ~100 times
per frame at the `debug` size, ~500 at the paper's). With ``distill.teacher_latents: replay``
(the default) the actors compute it once, in float32, and store it with the step as
``z_teacher``; the learner takes it from the batch.

    publish_teacher(client, namespace, learner.teacher)       # the learner, before actors start
    teacher = fetch_teacher(client, namespace, cfg, timeout=120)   # an actor, at its start
    step["z_teacher"] = teacher(obs["image"][None])[0]         # (z_dim,) float32

The weights travel through Redis as a safetensors record (diswm/broadcast.py: no pickle, CRC
checked; a bad one raises `BadWeights`), so an actor on another machine needs no copy of the
teacher checkpoint.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from diswm.broadcast import WeightStore
from diswm.config import Config
from diswm.models.video import make_teacher

#: The replay field that holds a step's teacher latent.
FIELD = "z_teacher"
#: The Redis record of the pretraining checkpoint's weights (the learner's teacher).
PRETRAINED = "pretrained"


def stores_teacher_latents(cfg: Config) -> bool:
    """Whether this run's actors compute and store the teacher's latents."""
    d = cfg.distill
    return bool(d.enabled and d.teacher and d.teacher_latents == "replay")


class TeacherLatents:
    """Frames -> the frozen teacher's latent (its encoder's mean), float32 on the CPU."""

    def __init__(self, encoder: nn.Module):
        self.encoder = encoder

    @classmethod
    def from_state(cls, cfg: Config, state: dict[str, torch.Tensor]) -> TeacherLatents:
        """From a teacher state dict with "encoder." keys (what `publish_teacher` stores)."""
        return cls(make_teacher(cfg.model, state, cfg.env.size))

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 frames -> (N, z_dim) float32."""
        image = torch.as_tensor(np.asarray(images))
        param = next(self.encoder.parameters())
        with torch.autocast(param.device.type, enabled=False):  # float32 whatever the caller's
            mean = self.encoder(image.to(param.device), sample=False)[0]
        return np.ascontiguousarray(mean.float().cpu().numpy())  # mean is a strided view


def publish_teacher(client, namespace: str, teacher: nn.Module) -> None:
    """Store the teacher encoder's weights for the run's actors."""
    state = {f"encoder.{k}": v for k, v in teacher.state_dict().items()}
    WeightStore(client, namespace, name="teacher").publish(0, state)


def fetch_teacher(client, namespace: str, cfg: Config, *, timeout: float,
                  poll: float = 0.2) -> TeacherLatents:
    """The teacher the learner published; waits up to `timeout` seconds for it (an actor may
    start before the learner has published). Raises TimeoutError naming the key, `BadWeights`
    for a record that fails its checks, ValueError for weights that do not fit the model."""
    store = WeightStore(client, namespace, name="teacher")
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, state = store.fetch()
            break
        except LookupError:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no teacher weights at diswm:{namespace}:teacher after {timeout:.0f} s: "
                    "the learner publishes them when it starts (distill.teacher_latents=replay)"
                ) from None
            time.sleep(poll)  # polling a key another process sets, with a deadline
    return TeacherLatents.from_state(cfg, state)


def publish_pretrained(client, namespace: str, state: dict[str, torch.Tensor]) -> None:
    """Store the pretraining checkpoint's weights (`load_pretrained`) for the run's learner:
    the driver reads `distill.teacher` on its own machine, and a learner on any node takes the
    teacher from Redis (a safetensors record, as the policy's), never from the driver's path."""
    WeightStore(client, namespace, name=PRETRAINED).publish(0, state)


def fetch_pretrained(client, namespace: str) -> dict[str, torch.Tensor] | None:
    """The weights `publish_pretrained` stored; None when the driver published none."""
    try:
        return WeightStore(client, namespace, name=PRETRAINED).fetch()[1]
    except LookupError:
        return None
