"""One intensity normalisation, inverted on output so results come back in the input's units.

- ``window``: a fixed range (CT in Hounsfield units): ``(x - low) / (high - low)``, clipped to
  [0, 1] as a display window is.
- ``percentile``: per image, ``low``/``high`` are percentiles (default 0.5 and 99.5) mapped
  to 0 and 1, not clipped (microscopy, X-ray, MR).
- ``minmax``: per image, min and max mapped to 0 and 1.
- ``none``: values used as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Normalizer:
    offset: float
    scale: float
    clip: bool

    def forward(self, array: np.ndarray) -> np.ndarray:
        out = (array - self.offset) / self.scale
        return np.clip(out, 0.0, 1.0) if self.clip else out

    def inverse(self, array: np.ndarray) -> np.ndarray:
        return array * self.scale + self.offset

    def describe(self) -> str:
        return f"0..1 = {self.offset:g}..{self.offset + self.scale:g} in the input's units"


def fit_normalizer(spec: dict, array: np.ndarray) -> Normalizer:
    kind = spec.get("type", "percentile")
    if kind == "window":
        low, high = float(spec["low"]), float(spec["high"])
        return Normalizer(low, high - low, clip=True)
    if kind == "percentile":
        low = spec.get("low") if spec.get("low") is not None else 0.5
        high = spec.get("high") if spec.get("high") is not None else 99.5
        lo, hi = np.percentile(array, [low, high])
    elif kind == "minmax":
        lo, hi = float(array.min()), float(array.max())
    else:
        return Normalizer(0.0, 1.0, clip=False)
    scale = float(hi - lo)
    # A flat image has no range to map: keep its level, unit scale, so nothing divides by 0.
    return Normalizer(float(lo), scale if scale > 0 else 1.0, clip=False)
