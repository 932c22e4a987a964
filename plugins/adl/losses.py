"""ADL's fidelity losses (seed 003): pyramid texture, histogram, and their sum with L1."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from toolbox.nn import B3_SPLINE, separable_blur


# -- losses ----------------------------------------------------------------------------------
RELEASE_PRE_BLUR = torch.tensor([0.002566, 0.1655, 0.6638, 0.1655, 0.002566])


def wavelet_bands(x: torch.Tensor, levels: int, release_compat: bool = False) -> list[torch.Tensor]:
    """A-trous B3-spline detail bands: w_j = c_(j-1) - c_j, c_j = c_(j-1) blurred at dilation 2^(j-1)."""
    current = x
    if release_compat:
        current = separable_blur(x, RELEASE_PRE_BLUR / RELEASE_PRE_BLUR.sum(), 1)
    bands = []
    for level in range(levels):
        blurred = separable_blur(current, B3_SPLINE, 2**level)
        bands.append(current - blurred)
        current = blurred
    return bands


class PyramidTextureLoss(torch.nn.Module):
    """Pyramid texture loss: L1 between a-trous B3-spline detail bands, every band summed.

    ``levels`` bands (dilations 1, 2, 4, ...), each weighted by ``weights`` (default 1).
    2D and 3D.  ``release_compat: true`` keeps only the coarsest band divided by the number
    of levels, after a small pre-blur, as the public release computes it.
    """

    def __init__(self, levels: int = 3, weights=None, release_compat: bool = False):
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be at least 1, got {levels}")
        if weights is not None and len(weights) != levels:
            raise ValueError(f"weights needs {levels} numbers, got {weights!r}")
        self.levels = levels
        self.weights = list(weights) if weights is not None else [1.0] * levels
        self.release_compat = release_compat

    def forward(self, prediction, target):
        prediction, target = prediction.float(), target.float()
        pred_bands = wavelet_bands(prediction, self.levels, self.release_compat)
        target_bands = wavelet_bands(target, self.levels, self.release_compat)
        if self.release_compat:
            return (pred_bands[-1] - target_bands[-1]).abs().mean() / self.levels
        return sum(w * (p - t).abs().mean() for w, p, t in zip(self.weights, pred_bands, target_bands))


def soft_histogram(x: torch.Tensor, bins: int, low: float, high: float) -> torch.Tensor:
    """Histogram counts per (image, channel) with linear (triangular) binning.

    Each value splits its unit count between its two nearest bin centres in proportion to
    its distance from them, so the counts are piecewise linear in the values and their
    gradient is non-zero; memory stays O(voxels), in 2D and 3D alike.  A value outside
    ``low..high`` (a residual or linear output can leave 0..1) is extrapolated from the two
    edge bins rather than clamped: its unit count still sums to one and its gradient still
    points back into the range.  Clamping gave such values no gradient, so the loss pushed
    a noisy background below 0 and nothing brought it back (a -3.7 offset in the MR
    background after 50 steps).
    """
    n, c = x.shape[:2]
    values = x.float().reshape(n * c, -1)
    position = (values - low) / (high - low) * (bins - 1)
    lower = position.detach().floor().clamp(0, bins - 2)
    upper_weight = position - lower
    counts = torch.zeros(n * c, bins, device=x.device, dtype=torch.float32)
    counts = counts.scatter_add(1, lower.long(), 1.0 - upper_weight)
    counts = counts.scatter_add(1, lower.long() + 1, upper_weight)
    return counts.reshape(n, c, bins)


class HistogramLoss(torch.nn.Module):
    """Histogram loss: log-cosh between the histograms of prediction and target.

    Per image and channel, ``bins`` bins over ``value_range``; counts compared with
    log-cosh and divided by the number of voxels (as the release scales it).  The histogram
    is soft (linear binning), so the loss has a gradient; ``release_compat: true`` uses the
    release's hard histogram, which has none.
    """

    def __init__(self, bins: int = 256, value_range=(0.0, 1.0), release_compat: bool = False):
        super().__init__()
        if bins < 2:
            raise ValueError(f"bins must be at least 2, got {bins}")
        low, high = (float(v) for v in value_range)
        if not high > low:
            raise ValueError(f"value_range must be [low, high] with low < high, got {value_range!r}")
        self.bins, self.low, self.high = bins, low, high
        self.release_compat = release_compat

    def _histogram(self, x):
        if not self.release_compat:
            return soft_histogram(x, self.bins, self.low, self.high)
        n, c = x.shape[:2]
        flat = x.detach().float().reshape(n * c, -1).clamp(self.low, self.high)
        hist = torch.stack([torch.histc(row, self.bins, self.low, self.high) for row in flat])
        return hist.reshape(n, c, self.bins)

    def forward(self, prediction, target):
        diff = self._histogram(prediction) - self._histogram(target)
        # log(cosh(d)) written to stay finite for large |d|: |d| + log(1 + e^(-2|d|)) - log 2.
        log_cosh = diff.abs() + F.softplus(-2 * diff.abs()) - math.log(2.0)
        voxels = prediction[0, 0].numel()
        loss = log_cosh.sum(dim=-1) / voxels
        if self.release_compat:  # no gradient: keep the graph connected with a zero term
            return loss.mean() + 0.0 * prediction.sum()
        return loss.mean()


class ADLLoss(torch.nn.Module):
    """ADL's fidelity loss at one scale: l1 * L1 + pyramid * L_pyr + histogram * L_hist."""

    def __init__(self, l1: float = 1.0, pyramid: float = 1.0, histogram: float = 1.0,
                 levels: int = 3, bins: int = 256, release_compat: bool = False):
        super().__init__()
        self.weights = (l1, pyramid, histogram)
        self.pyramid = PyramidTextureLoss(levels, release_compat=release_compat)
        self.histogram = HistogramLoss(bins, release_compat=release_compat)

    @property
    def release_compat(self) -> bool:
        return self.pyramid.release_compat

    @release_compat.setter
    def release_compat(self, value: bool) -> None:
        self.pyramid.release_compat = self.histogram.release_compat = value

    def forward(self, prediction, target):
        w_l1, w_pyr, w_hist = self.weights
        loss = w_l1 * (prediction.float() - target.float()).abs().mean()
        if w_pyr:
            loss = loss + w_pyr * self.pyramid(prediction, target)
        if w_hist:
            loss = loss + w_hist * self.histogram(prediction, target)
        return loss
