"""A collected dataset in memory, and (B, T) sequences sampled within episodes.

    data = VideoDataset.load("data/cheetah")            # verifies every shard's checksum
    batch = data.sample(rng, batch_size=16, length=32)  # {"image": (B, T, H, W, 3) uint8,
                                                        #  "is_first": (B, T) bool}

Frames stay uint8 (12 KiB each at 64x64): 100k frames take ~1.2 GB. The factors (``colours``,
``state``) load only when asked for (`with_factors=True`, for the disentanglement metrics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diswm.rollout import split_episodes
from pretrain.video_shards import iter_shards, read_manifest


@dataclass
class VideoDataset:
    folder: Path
    manifest: dict[str, Any]
    image: np.ndarray  # (N, H, W, 3) uint8
    is_first: np.ndarray  # (N,) bool
    factors: dict[str, np.ndarray] = field(default_factory=dict)  # (N, C) colours, (N, S) state
    episodes: list[tuple[int, int]] = field(default_factory=list)  # (start, length)

    @classmethod
    def load(cls, folder: str | Path, *, with_factors: bool = False,
             max_frames: int | None = None, verify: bool = True) -> VideoDataset:
        folder = Path(folder)
        manifest = read_manifest(folder)
        if not manifest["shards"]:
            raise ValueError(f"{folder}: the manifest lists no shards yet")
        images, firsts, colours, states, count = [], [], [], [], 0
        for _, arrays in iter_shards(folder, verify=verify):
            images.append(arrays["image"])
            firsts.append(arrays["is_first"])
            if with_factors:
                colours.append(arrays["colours"])
                states.append(arrays["state"])
            count += len(arrays["image"])
            if max_frames is not None and count >= max_frames:
                break
        is_first = np.concatenate(firsts)
        factors = ({"colours": np.concatenate(colours), "state": np.concatenate(states)}
                   if with_factors else {})
        return cls(folder, manifest, np.concatenate(images), is_first, factors,
                   split_episodes({"is_first": is_first}))

    @property
    def frames(self) -> int:
        return len(self.image)

    @property
    def size(self) -> int:
        return int(self.image.shape[1])

    def check_length(self, length: int) -> None:
        longest = max(n for _, n in self.episodes)
        if longest < length:
            raise ValueError(f"batch_length={length} is longer than every episode in "
                             f"{self.folder} (longest {longest} frames); lower "
                             "pretrain.batch_length or collect longer episodes")

    def sample(self, rng: np.random.Generator, batch_size: int, length: int) -> dict[str, np.ndarray]:
        """`batch_size` windows of `length` frames, each inside one episode, uniformly over all
        valid windows."""
        self.check_length(length)
        starts = np.array([s for s, n in self.episodes if n >= length])
        windows = np.array([n - length + 1 for _, n in self.episodes if n >= length])
        which = rng.choice(len(starts), size=batch_size, p=windows / windows.sum())
        offsets = starts[which] + (rng.random(batch_size) * windows[which]).astype(np.int64)
        idx = offsets[:, None] + np.arange(length)[None]
        return {"image": self.image[idx], "is_first": self.is_first[idx]}


__all__ = ["VideoDataset"]
