"""Experiment tracking: TensorBoard event files in every run folder (and W&B when asked).

    tracker = Tracker.open(cfg, run_dir, resume_step=None)   # nothing when logging is off
    tracker.scalars("train", row, env_steps)                 # every numeric column of the row
    tracker.image("eval/openloop", png_bytes, env_steps)
    tracker.video("eval/episode", gif_bytes, env_steps)      # an animated GIF (TensorBoard's
    tracker.close()                                          # image plugin plays it)

Every step is the run's env steps, so curves from TensorBoard, `train.csv`, `eval.csv` and
`diswm report` share one axis. The events go to ``<run>/tb`` (`diswm tensorboard RUN` serves
them); a resumed run purges what the crashed one logged after its checkpoint
(TensorBoard's ``purge_step``), so no step appears twice. Only the learner's loop writes here.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diswm.config import Config

TB_DIR = "tb"
#: Columns that are the step axis itself (or its grid point): not plotted against it.
AXIS = ("env_steps", "eval_step")


class Tracker:
    def __init__(self, writers: list[Any]):
        self.writers = writers

    @classmethod
    def open(cls, cfg: Config, run_dir: str | Path, resume_step: int | None = None) -> Tracker:
        writers: list[Any] = []
        if cfg.logging.tensorboard:
            writers.append(_TensorBoard(Path(run_dir) / TB_DIR, cfg, resume_step))
        if cfg.logging.wandb:
            writers.append(_WandB(Path(run_dir), cfg, resume_step))
        return cls(writers)

    def scalars(self, prefix: str, row: Mapping[str, Any], step: int) -> None:
        values = {f"{prefix}/{k}": float(v) for k, v in row.items()
                  if k not in AXIS and isinstance(v, int | float) and not isinstance(v, bool)
                  and math.isfinite(float(v))}
        for w in self.writers:
            w.scalars(values, int(step))

    def image(self, tag: str, png: bytes, step: int) -> None:
        for w in self.writers:
            w.image(tag, png, int(step))

    def video(self, tag: str, gif: bytes, step: int) -> None:
        for w in self.writers:
            w.video(tag, gif, int(step))

    def flush(self) -> None:
        for w in self.writers:
            w.flush()

    def close(self) -> None:
        for w in self.writers:
            w.close()
        self.writers = []


class _TensorBoard:
    def __init__(self, folder: Path, cfg: Config, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder), flush_secs=10, purge_step=resume_step)
        if resume_step is None:
            self.writer.add_text("config", "```yaml\n" + cfg.to_yaml() + "```", 0)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, png: bytes, step: int) -> None:
        self._encoded(tag, png, step)

    def video(self, tag: str, gif: bytes, step: int) -> None:
        self._encoded(tag, gif, step)

    def _encoded(self, tag: str, data: bytes, step: int) -> None:
        """An already encoded PNG or GIF as an image summary (no decode, no re-encode)."""
        from PIL import Image
        from tensorboard.compat.proto.summary_pb2 import Summary

        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
        image = Summary.Image(height=height, width=width, colorspace=3,
                              encoded_image_string=data)
        self.writer._get_file_writer().add_summary(
            Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, run_dir: Path, cfg: Config, resume_step: int | None):
        try:
            import wandb
        except ImportError:
            raise ValueError("logging.wandb=true needs the wandb package: pip install "
                             "wandb") from None
        lg = cfg.logging
        self.wandb = wandb
        self.run = wandb.init(project=lg.wandb_project, entity=lg.wandb_entity or None,
                              mode=lg.wandb_mode, dir=str(run_dir), config=cfg.to_dict(),
                              name=run_dir.name, id=_wandb_id(run_dir), resume="allow")
        self.run.define_metric("env_steps")
        self.run.define_metric("*", step_metric="env_steps")  # one axis with TensorBoard's

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        self.run.log({**values, "env_steps": step})

    def image(self, tag: str, png: bytes, step: int) -> None:
        from PIL import Image

        self.run.log({tag: self.wandb.Image(Image.open(io.BytesIO(png))), "env_steps": step})

    def video(self, tag: str, gif: bytes, step: int) -> None:
        self.run.log({tag: self.wandb.Video(io.BytesIO(gif), format="gif"),
                      "env_steps": step})

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.run.finish()


def _wandb_id(run_dir: Path) -> str:
    """One W&B run per run folder, kept in it: a resumed run continues the same W&B run."""
    import secrets

    from diswm.atomic import atomic_write

    path = run_dir / "wandb.id"
    if path.exists():
        return path.read_text().strip()
    run_id = secrets.token_hex(8)
    atomic_write(path, run_id + "\n")
    return run_id
