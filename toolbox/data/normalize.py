"""The one intensity normalisation that training, validation, ``denoise`` and ``evaluate`` share.

A ``Normalizer`` is a linear map ``(x - offset) / scale`` and its inverse: nothing is clipped,
so every voxel is denoised and comes back in the input's units (CT air below the window,
dense bone and metal above it included).

- ``window``: a fixed range (CT in Hounsfield units): ``low``..``high`` -> 0..1.  Values
  outside it are kept (air at -1024 HU maps a little below 0, bone above 1); ``low..high``
  is also the display window of figures and the data range of CT scores.
- ``percentile``: per image, the ``low``/``high`` percentiles (default 0.5 and 99.5) -> 0..1
  (microscopy, X-ray, MR).
- ``minmax``: per image, the minimum and maximum -> 0..1.
- ``none``: values used as they are.

Why the per-image statistics are taken on a smoothed copy: training normalises a *clean*
image and adds noise afterwards, while ``denoise`` only has the *noisy* one.  Percentiles
of a noisy image move with the noise (zero-mean noise on a zero background puts the 0.5th
percentile at about -2.4 sigma), so the same anatomy would land at a different place in
0..1 at inference than in training, and a network that learnt "background = 0" (any
bounded output head does) hands the background back shifted.  Percentiles of the image
smoothed with a Gaussian (2 voxels in 3D, 4 pixels in 2D: the noise's standard deviation
shrinks about 15-20 times) hardly move with the noise (measured on a real MR volume: the
low level by 0.13 sigma in 3D and 0.12-0.2 sigma in 2D, the range by 1-4 %), and they scale
exactly with the image, so an image multiplied by ``a`` gives the same normalised image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("window", "percentile", "minmax", "none")

# Gaussian smoothing (in voxels) of the copy that per-image statistics are taken from.
SMOOTHING = {1: 8.0, 2: 4.0, 3: 2.0}


@dataclass(frozen=True)
class Normalizer:
    offset: float
    scale: float

    def forward(self, array: np.ndarray) -> np.ndarray:
        return (array - self.offset) / self.scale

    def inverse(self, array: np.ndarray) -> np.ndarray:
        return array * self.scale + self.offset

    def describe(self) -> str:
        return f"0..1 = {self.offset:g}..{self.offset + self.scale:g} in the input's units"


def smoothed_for_statistics(array: np.ndarray) -> np.ndarray:
    """``array`` (C, *spatial) smoothed along its spatial axes, so that statistics taken from
    it barely depend on the noise (see the module's docstring)."""
    from scipy.ndimage import gaussian_filter

    spatial = array.ndim - 1
    size = SMOOTHING.get(min(spatial, 3), 2.0)
    return gaussian_filter(np.asarray(array, dtype=np.float32), sigma=(0,) + (size,) * spatial,
                           mode="nearest", truncate=3.0)


def fit_normalizer(spec: dict, array: np.ndarray) -> Normalizer:
    """The normaliser of ``array`` ((C, *spatial), in the input's units) under ``spec``.

    Give it the image as the model will see it: the clean image in training (noise is added
    after normalising), the noisy one at inference; the statistics are built so that both
    give (nearly) the same map.
    """
    kind = spec.get("type", "percentile")
    if kind == "window":
        low, high = float(spec["low"]), float(spec["high"])
        return Normalizer(low, high - low)
    if kind == "none":
        return Normalizer(0.0, 1.0)
    smoothed = smoothed_for_statistics(array)
    if kind == "percentile":
        low = spec.get("low") if spec.get("low") is not None else 0.5
        high = spec.get("high") if spec.get("high") is not None else 99.5
        lo, hi = np.percentile(smoothed, [low, high])
    elif kind == "minmax":
        lo, hi = float(smoothed.min()), float(smoothed.max())
    else:
        raise ValueError(f"unknown normalisation {kind!r}; one of {', '.join(KINDS)}")
    scale = float(hi - lo)
    # A flat image has no range to map: keep its level, unit scale, so nothing divides by 0.
    return Normalizer(float(lo), scale if scale > 0 else 1.0)


def data_range(spec: dict, reference: np.ndarray) -> float:
    """The data range PSNR/SSIM are computed with, in the input's units: the window's width
    for a fixed window (CT: 2000 HU for -1000..1000), else the clean reference's max - min."""
    if spec.get("type") == "window":
        return float(spec["high"]) - float(spec["low"])
    extent = float(np.max(reference) - np.min(reference))
    return extent if extent > 0 else 1.0


def describe_range(spec: dict) -> str:
    """How the data range is chosen, for report titles."""
    if spec.get("type") == "window":
        return f"data range {float(spec['high']) - float(spec['low']):g} (window {spec['low']:g}..{spec['high']:g})"
    return "data range = max - min of each clean image"
