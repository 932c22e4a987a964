"""``sr_degradation``: a clean high-resolution image made into a noisy low-resolution one, as
a widefield microscope (or a thick-slice scanner) sees it, for users without real pairs.

Blur with a Gaussian point-spread function (``psf_sigma`` in high-resolution pixels, a
value or a ``[low, high]`` range drawn per sample), integrate over ``scale`` x ``scale``
pixel blocks (a camera pixel collects the light that falls on it: an average, not a
subsample), then the noise of ``noise`` (any registered noise model on normalised
images; Poisson-Gaussian by default).  Works on ``(C, *spatial)`` in 2D and 3D; every
spatial axis is downsampled (a 2D recipe trains on 2D slices).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import toolbox

SCALES = (1, 2, 4)


def gaussian_kernel(sigma: float, dtype=torch.float32) -> torch.Tensor:
    """A normalised 1D Gaussian of SD ``sigma`` (pixels), 3 SD to each side."""
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(C, *spatial)``, edges mirrored (``sigma`` 0: unchanged)."""
    if sigma <= 0:
        return image
    kernel = gaussian_kernel(sigma, image.dtype)
    radius = kernel.numel() // 2
    out = image.unsqueeze(0)  # (1, C, *spatial)
    dims = image.ndim - 1
    for axis in range(dims):
        shape = [1] * dims
        shape[axis] = kernel.numel()
        weight = kernel.view(1, 1, *shape).repeat(out.shape[1], 1, *[1] * dims)
        pads = [0, 0] * dims
        pads[2 * (dims - 1 - axis)] = pads[2 * (dims - 1 - axis) + 1] = radius
        mode = "reflect" if out.shape[2 + axis] > radius else "replicate"
        padded = F.pad(out, pads, mode=mode)
        conv = F.conv2d if dims == 2 else F.conv3d
        out = conv(padded, weight, groups=out.shape[1])
    return out.squeeze(0)


def bin_pixels(image: torch.Tensor, scale: int) -> torch.Tensor:
    """The mean over ``scale``-wide blocks along every spatial axis (sizes must divide)."""
    if scale == 1:
        return image
    pool = F.avg_pool2d if image.ndim == 3 else F.avg_pool3d
    return pool(image.unsqueeze(0), scale).squeeze(0)


class SRDegradation:
    def __init__(self, scale: int = 2, psf_sigma=1.0, noise=None):
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(map(str, SCALES))}, got {scale}")
        values = list(psf_sigma) if isinstance(psf_sigma, (list, tuple)) else [psf_sigma]
        if (isinstance(psf_sigma, (list, tuple)) and (len(values) != 2 or values[0] > values[1])) \
                or any(float(v) < 0 for v in values):
            raise ValueError(f"psf_sigma must be >= 0 (high-resolution pixels) or a [low, high] range, "
                             f"got {psf_sigma!r}")
        spec = noise if noise is not None else {"type": "poisson_gaussian", "peak": 100, "sigma": 0.01}
        if isinstance(spec, dict) and spec.get("type") == "sr_degradation":
            raise ValueError("noise cannot be another sr_degradation")
        try:
            self.noise = toolbox.plugin_registry().build("noise_models", spec, None, "noise")
        except toolbox.RecipeError as error:
            raise ValueError(str(error)) from None
        if getattr(self.noise, "units", None) == "native" or getattr(self.noise, "whole_image", False):
            raise ValueError("noise must be a model on normalised images (not camera, low_dose_ct)")
        self.scale, self.psf_sigma = int(scale), psf_sigma

    def photons(self):
        """The photon count of the noise after binning (for BM3D + Anscombe baselines)."""
        photons = getattr(self.noise, "photons", None)
        return photons() if callable(photons) else None

    def noise_free(self, clean, generator):
        """The blurred, binned image before its noise (with ``generator`` seeded as for the
        noisy one, the same PSF): the baselines are given the true noise SD from it."""
        return self._degrade(clean, generator)

    def __call__(self, clean, generator):
        return self.noise(self._degrade(clean, generator).to(clean.dtype), generator)

    def _degrade(self, clean, generator):
        size = clean.shape[1:]
        if any(s % self.scale for s in size):
            raise ValueError(f"sr_degradation: a {'x'.join(map(str, size))} image does not divide by "
                             f"scale {self.scale}; crop it to a multiple")
        if isinstance(self.psf_sigma, (list, tuple)):
            low, high = float(self.psf_sigma[0]), float(self.psf_sigma[1])
            sigma = low + (high - low) * float(torch.rand((), generator=generator))
        else:
            sigma = float(self.psf_sigma)
        return bin_pixels(blur(clean.float(), sigma), self.scale)
