"""Open-loop prediction of a world model: the diagnostic Dreamer users look at first.

DreamerV2's ``video_pred``: filter the first ``context`` frames with the posterior, then roll
the prior forward from the last posterior state with the recorded actions, decoding every step::

    post  = observe(embed(image[:, :context]), action[:, :context], is_first[:, :context])
    s     = post[:, context - 1]
    s_t   = img_step(s_{t-1}, action[:, t])          for t = context .. T-1  (open loop)
    frame = decoder(feat(s_t)),  reward = reward_head(feat(s_t))

``action[:, t]`` is the action that led to observation t (zeros where ``is_first``), as in the
replay. Errors are in [0, 1] pixel units (the decoder's means live in ``x / 255 - 0.5`` space,
so a difference is the same in both): ``recon_image_mse`` over the context part (posterior
reconstructions), ``openl_image_mse`` and ``openl_reward_mae`` over the open-loop part only.
The squared error is that of the unclipped means, i.e. what the image NLL is trained on
(NLL per pixel = 0.5 * squared error + const).

Runs under ``torch.no_grad()``, in float32 with autocast off, in whatever train/eval mode the
model is, and with its own seeded RNG (``torch.random.fork_rng``, seeding the CPU generator and
the model's GPU's): the result is reproducible and the caller's RNG stream (e.g. the
learner's, checkpointed for exact resume) is untouched.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from diswm.models.nets import preprocess_image
from diswm.models.rssm import RSSM, State


def _tensor(x: Any, device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device)


def open_loop(wm: nn.Module, image_BTHWC: Any, action_BTA: Any, reward_BT: Any, is_first_BT: Any,
              context: int = 5, *, seed: int = 0, sample: bool = True) -> dict[str, Any]:
    """Open-loop predictions of `wm` (a `WorldModel`) on recorded sequences.

    Inputs may be numpy arrays or tensors: image uint8 (B, T, H, W, C), action (B, T, A),
    reward (B, T), is_first (B, T). `context` frames are observed (1 <= context < T).
    `sample` samples z and the latents as DreamerV2 does (False: their means).

    Returns CPU tensors ``model_image`` (B, T, H, W, C) float pixel means in [0, 1] units
    (unclipped; posterior reconstructions for t < context, open-loop predictions after),
    ``reward_pred`` (B, T), ``feat`` (B, T, F) (posterior then prior features), ``image_se_t``
    (T,) the per-step mean squared pixel error, plus ``context`` and the floats
    ``openl_image_mse``, ``openl_reward_mae``, ``recon_image_mse``.
    """
    device = next(wm.parameters()).device
    image = _tensor(image_BTHWC, device)
    if image.dtype != torch.uint8 or image.ndim != 5:
        raise ValueError(f"image must be uint8 (B, T, H, W, C), got {image.dtype} "
                         f"{tuple(image.shape)}")
    B, T = image.shape[:2]
    if not 1 <= context < T:
        raise ValueError(f"open_loop needs 1 <= context < T; got context {context}, T {T}")
    action = _tensor(action_BTA, device, torch.float32)
    reward = _tensor(reward_BT, device, torch.float32)
    is_first = _tensor(is_first_BT, device, torch.bool)
    # Seed (and afterwards restore) exactly the generators this run draws from: the CPU's and
    # the model's GPU's (torch.manual_seed would also seed other GPUs, outside the fork).
    cuda = ([device.index if device.index is not None else torch.cuda.current_device()]
            if device.type == "cuda" else [])
    with torch.no_grad(), torch.random.fork_rng(devices=cuda), \
            torch.autocast(device.type, enabled=False):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        truth = preprocess_image(image)  # [-0.5, 0.5]
        embed = wm.embed(truth[:, :context], sample=sample)
        post, _ = wm.rssm.observe(embed, action[:, :context], is_first[:, :context],
                                  sample=sample)
        feats = [RSSM.feat(post)]
        state: State = {k: v[:, -1] for k, v in post.items()}
        for t in range(context, T):
            state = wm.rssm.img_step(state, action[:, t], sample=sample)
            feats.append(RSSM.feat(state)[:, None])
        feat = torch.cat(feats, 1)
        model = wm.decoder(feat).float()
        reward_pred = wm.reward(feat)[..., 0].float()
    se_t = (model - truth).square().mean(dim=(0, 2, 3, 4))  # (T,)
    return {
        "model_image": (model + 0.5).cpu(), "reward_pred": reward_pred.cpu(),
        "feat": feat.cpu(), "image_se_t": se_t.cpu(), "context": context,
        "openl_image_mse": float(se_t[context:].mean()),
        "openl_reward_mae": float((reward_pred - reward)[:, context:].abs().mean()),
        "recon_image_mse": float(se_t[:context].mean()),
    }


def reconstruct(wm: nn.Module, image_THWC: Any, action_TA: Any, is_first_T: Any) -> np.ndarray:
    """The world model's posterior reconstruction of one recorded episode (latent means, no
    sampling): (T, H, W, C) float pixel means in [0, 1] units, unclipped. What the agent's
    model makes of each frame it saw; the eval videos show it beside the frame."""
    device = next(wm.parameters()).device
    image = _tensor(image_THWC, device)[None]
    action = _tensor(action_TA, device, torch.float32)[None]
    is_first = _tensor(is_first_T, device, torch.bool)[None]
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        embed = wm.embed(preprocess_image(image), sample=False)
        post, _ = wm.rssm.observe(embed, action, is_first, sample=False)
        model = wm.decoder(RSSM.feat(post)).float()
    return (model[0] + 0.5).cpu().numpy()
