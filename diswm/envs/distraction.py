"""Colour distractions (DESIGN.md section 1).

At reset each colour group's RGB is drawn uniformly from the box ``centre +- box`` (clipped to
[0, 1]); after every agent step each group drifts by N(0, step_std) and is clipped back into the
box. The drawn colours are the ground-truth factors for disentanglement metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Scheme centres. Training starts on A and switches to B for good at the run's midpoint.
SCHEMES: dict[str, tuple[float, float, float]] = {
    "A": (0.7, 0.3, 0.5),
    "B": (0.5, 0.7, 0.3),
}


def scheme_box(scheme: str, box: float) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) RGB bounds of `scheme`, clipped to [0, 1]."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown colour scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
    centre = np.asarray(SCHEMES[scheme], np.float64)
    return np.clip(centre - box, 0.0, 1.0), np.clip(centre + box, 0.0, 1.0)


class ColourDistraction:
    """Writes distracting colours into a model's RGBA table.

    Args:
      rgba: the model's (N, 4) RGBA array (``mat_rgba`` or ``geom_rgba``), modified in place.
      groups: rows of `rgba` that share one colour draw; one factor of 3 per group.
      scheme, box, step_std: see `DistractionConfig`. ``drift=False`` draws only at reset.
      rng: the generator every draw comes from (seeded by the env: same seed, same colours).
    """

    def __init__(self, rgba: np.ndarray, groups: Sequence[Sequence[int]], *, scheme: str,
                 box: float, step_std: float, drift: bool, rng: np.random.Generator):
        self._rgba = rgba
        self._groups = [np.asarray(g, dtype=np.int64) for g in groups]
        self._box = float(box)
        self._step_std = float(step_std)
        self._drift = drift
        self._rng = rng
        self.scheme = scheme
        self._low, self._high = scheme_box(scheme, box)
        self.colours_G3 = np.zeros((len(self._groups), 3), np.float64)

    @property
    def num_factors(self) -> int:
        return 3 * len(self._groups)

    def reset(self) -> None:
        """New colours for a new episode."""
        self.colours_G3 = self._rng.uniform(self._low, self._high, size=self.colours_G3.shape)
        self._write()

    def step(self) -> None:
        """Per-step drift, clipped back into the scheme's box."""
        if not self._drift or self._step_std == 0.0:
            return
        noise = self._rng.normal(0.0, self._step_std, size=self.colours_G3.shape)
        self.colours_G3 = np.clip(self.colours_G3 + noise, self._low, self._high)
        self._write()

    def set_scheme(self, scheme: str) -> None:
        """Switch to another scheme now: colours are redrawn from its box at once."""
        self._low, self._high = scheme_box(scheme, self._box)
        self.scheme = scheme
        self.reset()

    def factors(self) -> np.ndarray:
        return self.colours_G3.astype(np.float32).reshape(-1)

    def _write(self) -> None:
        for rows, colour in zip(self._groups, self.colours_G3, strict=True):
            self._rgba[rows, :3] = colour
