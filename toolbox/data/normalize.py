"""The one intensity normalisation that training, validation, ``denoise`` and ``evaluate`` share.

A ``Normalizer`` is a linear map ``(x - offset) / scale`` and its inverse: nothing is clipped,
so every voxel is denoised and comes back in the input's units (CT air below the window,
dense bone and metal above it included).

- ``window``: a fixed range (CT in Hounsfield units): ``low``..``high`` -> 0..1.  Values
  outside it are kept (air at -1024 HU maps a little below 0, bone above 1); ``low..high``
  is also the display window of figures and the data range of CT scores.
- ``percentile``: per image, a dark level -> 0 and a bright level -> 1 (microscopy, X-ray,
  data with an arbitrary offset): the mean of the darkest ``low`` % (default 0.5) and of
  the brightest ``100 - high`` % (default 99.5 -> 0.5 %) of the image (at least 128
  voxels of each half of the chessboard below).
- ``scale``: per image, 0 stays 0 and the bright level -> 1: for data whose zero means "no
  signal" (MR magnitude images, fluorescence with the camera offset removed).  A zero
  background is then exactly 0 in training and in use, whatever the noise, Rician included.
- ``minmax``: per image, the minimum and maximum of a smoothed copy -> 0..1.
- ``none``: values used as they are.

``floor`` (any kind, optional): the lowest value the images can take, in their own units
(0 for magnitude MR and photon counts).  A denoised image is set to it wherever it falls
below (``Normalizer.denoised``), the model's and every classical method's alike: a residual
network over a zero background with Gaussian noise returns values down to about -0.35
sigma there, which no magnitude image has (+0.35 dB for `mr3d` at 15 % noise, +0.16 for
BM4D).  Noisy images are never floored.

Why the levels are estimated this way: training normalises a *clean* image and adds noise
afterwards, while ``denoise`` only has the *noisy* one.  Percentiles of a noisy image move
with the noise (zero-mean noise on a zero background puts the 0.5th percentile at about
-2.4 sigma; even a smoothed copy's moves by 0.15-0.3 sigma), so the same anatomy would land
elsewhere in 0..1 at inference than in training, and a network that learnt "background =
0" (any bounded output head does) hands the background back shifted: a real MR volume came
out worse than its noisy input.  So the voxels are split like a chessboard: a smoothed copy
of one half *chooses* the darkest (brightest) region, and the level is the *mean of the
other half* there.  The two halves' noise is independent, so the choice cannot favour
voxels whose noise happens to be low, and the mean of zero-mean noise is zero: the level is
the clean image's level over that region, within the noise's error of the mean (measured on
the bundled MR volume: 0.01-0.05 sigma, against 0.15 for percentiles of a smoothed copy),
and both halves swap roles and are averaged.  Every level scales with the image, so the
same anatomy at another intensity scale gives the same normalised image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("window", "percentile", "scale", "minmax", "none")

# Gaussian smoothing (in voxels) of the copy that chooses the dark and bright regions.
SMOOTHING = {2: 4.0, 3: 2.0}


@dataclass(frozen=True)
class Normalizer:
    offset: float
    scale: float
    floor: float | None = None  # the images' lowest value, in their units (see the module)

    def forward(self, array: np.ndarray) -> np.ndarray:
        return (array - self.offset) / self.scale

    def inverse(self, array: np.ndarray) -> np.ndarray:
        return array * self.scale + self.offset

    def denoised(self, array: np.ndarray) -> np.ndarray:
        """A denoised image back in the input's units, raised to ``floor`` where below it."""
        units = self.inverse(array)
        return units if self.floor is None else np.maximum(units, np.asarray(self.floor, units.dtype))

    def describe(self) -> str:
        return f"0..1 = {self.offset:g}..{self.offset + self.scale:g} in the input's units"


def _smoothed(values: np.ndarray, weights: np.ndarray, size: float) -> np.ndarray:
    """Gaussian average of ``values`` over the voxels where ``weights`` is 1 (spatial axes)."""
    from scipy.ndimage import gaussian_filter

    sigma = (0,) + (size,) * (values.ndim - 1)
    total = gaussian_filter(values * weights, sigma=sigma, mode="nearest", truncate=3.0)
    count = gaussian_filter(weights, sigma=sigma, mode="nearest", truncate=3.0)
    return total / np.maximum(count, 1e-6)


# The dark and bright regions hold at least this many voxels of each half: on small images
# (an 80x96 slice has 38 voxels in its darkest 0.5 %) the mean of a few voxels is noisy.
MIN_REGION = 128
# Above this many values, levels are estimated on every other voxel along each axis.
MAX_VOXELS = 2**24


def noise_robust_levels(array: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """Dark and bright levels of ``array`` (C, *spatial): the mean of the darkest ``low`` %
    and of the brightest ``100 - high`` % (at least ``MIN_REGION`` voxels of each half),
    estimated so that zero-mean noise does not move them (see the module's docstring)."""
    array = np.asarray(array)
    # Levels are statistics: a large volume gives the same ones from every other voxel along
    # each axis, in a tenth of the memory (the steps here hold several copies of the array).
    while array.size > MAX_VOXELS:
        array = array[(slice(None),) + (slice(None, None, 2),) * (array.ndim - 1)]
    array = np.ascontiguousarray(array, dtype=np.float32)
    spatial = array.ndim - 1
    size = SMOOTHING.get(min(max(spatial, 2), 3))
    # Chessboard parity of every voxel, built from one small range per axis (np.indices
    # would hold a full int64 copy of the volume per axis).
    parity = np.zeros((1,) * array.ndim, dtype=np.uint8)
    for axis, length in enumerate(array.shape[1:], start=1):
        shape = [1] * array.ndim
        shape[axis] = length
        parity = parity + (np.arange(length, dtype=np.uint8) % 2).reshape(shape)
    parity = np.broadcast_to(parity % 2, array.shape)
    levels = []
    for chooser in (0, 1):
        smoothed = _smoothed(array, (parity == chooser).astype(np.float32), size)[parity != chooser]
        measured = array[parity != chooser]
        if measured.size == 0:  # a single voxel: nothing to split
            smoothed = measured = array.ravel()
        count = measured.size
        dark = min(count, max(1, round(count * low / 100), MIN_REGION))
        bright = min(count, max(1, round(count * (100 - high) / 100), MIN_REGION))
        darkest = np.argpartition(smoothed, dark - 1)[:dark]
        brightest = np.argpartition(smoothed, count - bright)[count - bright:]
        levels.append((float(measured[darkest].mean()), float(measured[brightest].mean())))
    return float(np.mean([l for l, _ in levels])), float(np.mean([h for _, h in levels]))


def fit_normalizer(spec: dict, array: np.ndarray) -> Normalizer:
    """The normaliser of ``array`` ((C, *spatial), in the input's units) under ``spec``.

    Give it the image as the model will see it: the clean image in training (noise is added
    after normalising), the noisy one at inference; the levels are estimated so that both
    give the same map within the noise's error of the mean.
    """
    kind = spec.get("type", "percentile")
    floor = None if spec.get("floor") is None else float(spec["floor"])
    if kind == "window":
        low, high = float(spec["low"]), float(spec["high"])
        return Normalizer(low, high - low, floor)
    if kind == "none":
        return Normalizer(0.0, 1.0, floor)
    low = spec.get("low") if spec.get("low") is not None else 0.5
    high = spec.get("high") if spec.get("high") is not None else 99.5
    if kind == "percentile":
        lo, hi = noise_robust_levels(array, low, high)
    elif kind == "scale":
        lo, hi = 0.0, noise_robust_levels(array, low, high)[1]
    elif kind == "minmax":
        smoothed = _smoothed(np.asarray(array, np.float32), np.ones(np.shape(array), np.float32),
                             SMOOTHING.get(min(max(np.ndim(array) - 1, 2), 3)))
        lo, hi = float(smoothed.min()), float(smoothed.max())
    else:
        raise ValueError(f"unknown normalisation {kind!r}; one of {', '.join(KINDS)}")
    scale = float(hi - lo)
    # A flat image has no range to map: keep its level, unit scale, so nothing divides by 0.
    return Normalizer(float(lo), scale if scale > 0 else 1.0, floor)


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
