"""What this machine can hold and run, checked before a run starts.

`check_fits(cfg)` refuses, by name, a configuration this machine cannot run: a batch whose images
alone take more than a quarter of its memory, more envs than its memory holds (about 85 MB each,
when every env lives here), or ``train.device=cuda`` without a visible CUDA device.
`diswm.presets.load_config` applies it to every configuration it resolves; a saved ``config.yaml``
(`Config.load`) is not checked, so reading a run folder does not depend on the machine.
"""

from __future__ import annotations

import os

from diswm.config import Config, ConfigError


def physical_memory() -> int:
    """Bytes of RAM on this machine (0 if unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_fits(cfg: Config) -> Config:
    """`cfg` if this machine can run it; ConfigError naming the setting otherwise."""
    memory = physical_memory()
    batch_bytes = (cfg.train.batch_size * cfg.train.batch_length * cfg.env.size ** 2 * 3
                   * 4)  # the batch's images as float32, before any activation
    if memory and batch_bytes > memory // 4:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} x train.batch_length="
            f"{cfg.train.batch_length} at {cfg.env.size}x{cfg.env.size} needs "
            f"{batch_bytes / 2**30:.1f} GiB for the batch's images alone; this machine has "
            f"{memory / 2**30:.0f} GiB: use a smaller batch")
    if (memory and not cfg.runtime.ray_address  # one machine: every env lives here
            and cfg.runtime.envs_per_actor * cfg.runtime.actors * 85e6 > memory):
        raise ConfigError(
            f"runtime.actors={cfg.runtime.actors} x runtime.envs_per_actor="
            f"{cfg.runtime.envs_per_actor} envs need about "
            f"{cfg.runtime.actors * cfg.runtime.envs_per_actor * 85e6 / 2**30:.0f} GiB "
            f"(~85 MB per env); this machine has {memory / 2**30:.0f} GiB")
    if cfg.train.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("train.device='cuda' but no CUDA device is visible; use 'auto'")
    return cfg
