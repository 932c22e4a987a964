"""Low-dose CT noise simulated where it arises: photon counts on the detector (issue 12).

HU -> linear attenuation (``mu = mu_water (1 + HU / 1000)``, ``mu_water`` 0.0192 / mm: water
at about 70 keV, the effective energy of a 120 kVp spectrum) -> parallel-beam line
integrals at the slice's pixel spacing (scikit-image's ``radon``) -> counts ~ Poisson(I0
exp(-p)) plus electronic Gaussian noise -> p' = -log(max(counts, 1) / I0) -> the noise
``p' - p`` reconstructed by filtered back-projection (``iradon``) and added to the image in HU.

Reconstructing the noise alone (FBP is linear) gives the image exactly the noise a scan at
``I0`` would have (streaky, correlated, strongest behind dense structures) without
FBP's own blur and artefacts on the anatomy.  For images that already carry the noise of a
dose ``image_I0``, only the difference is inserted (Yu et al. 2012): Gaussian noise in the
line integrals whose variance is the target dose's minus the image's.

``I0`` (photons per detector bin and view, unattenuated; about 1e5 is "clinical", LoDoPaB
uses 4096) may be a ``[low, high]`` range drawn log-uniformly per image, or give ``dose``
(a fraction, or range) of ``reference_I0``.  The model acts on whole slices in HU (it
declares ``whole_image = True``): training draws ``data.noise_copies`` noisy copies of
each training image once, at the start; ``toolbox evaluate`` and validation draw one per
held-out image; 3D volumes are done slice by slice.
"""

from __future__ import annotations

import math

import numpy as np
import torch

import toolbox

MU_WATER = 0.0192  # per mm, water at about 70 keV


def _log_uniform(value, generator: torch.Generator) -> float:
    if isinstance(value, (list, tuple)):
        low, high = math.log(float(value[0])), math.log(float(value[1]))
        return math.exp(low + (high - low) * float(torch.rand((), generator=generator)))
    return float(value)


def _positive(name: str, value) -> None:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if isinstance(value, (list, tuple)) and (len(values) != 2 or values[0] > values[1]):
        raise ValueError(f"{name} as a range must be [low, high], got {value!r}")
    if any(not isinstance(v, (int, float)) or v <= 0 for v in values):
        raise ValueError(f"{name} must be positive, got {value!r}")


class LowDoseCT:
    """Low-dose CT noise from Poisson photon counts and FBP, on whole slices in HU."""

    whole_image = True  # called on whole images in their own units (see toolbox.hookspecs)

    def __init__(self, I0=1e5, dose=None, reference_I0: float = 1e5, electronic_sd: float = 10.0,
                 views: int = 720, filter: str = "ramp", mu_water: float = MU_WATER, image_I0=None,
                 pixel_mm: float | None = None):
        if dose is not None:
            _positive("dose", dose)
            _positive("reference_I0", reference_I0)
        else:
            _positive("I0", I0)
        if image_I0 is not None:
            _positive("image_I0", image_I0)
        if views < 2 or electronic_sd < 0 or mu_water <= 0:
            raise ValueError("views must be >= 2, electronic_sd >= 0 and mu_water > 0")
        filters = ("ramp", "shepp-logan", "cosine", "hamming", "hann")
        if filter not in filters:
            raise ValueError(f"filter must be one of {', '.join(filters)}, got {filter!r}")
        if pixel_mm is not None:
            _positive("pixel_mm", pixel_mm)
        self.I0, self.dose, self.reference_I0 = I0, dose, reference_I0
        self.electronic_sd, self.views, self.filter = float(electronic_sd), int(views), filter
        self.mu_water, self.image_I0, self.pixel_mm = float(mu_water), image_I0, pixel_mm

    def draw_I0(self, generator: torch.Generator) -> float:
        if self.dose is not None:
            return _log_uniform(self.dose, generator) * float(self.reference_I0)
        return _log_uniform(self.I0, generator)

    def __call__(self, clean, generator: torch.Generator, spacing=None, slice_axis: int | None = None):
        """``clean`` in HU, ``(C, H, W)`` or ``(C, D, H, W)`` (slices along ``slice_axis``,
        default the first spatial axis); ``spacing`` in mm per spatial axis."""
        array = clean.detach().cpu().double().numpy() if torch.is_tensor(clean) else np.asarray(clean, float)
        I0 = self.draw_I0(generator)
        noisy = np.empty_like(array)
        if array.ndim == 3:
            for c in range(array.shape[0]):
                noisy[c] = self.slice_noise(array[c], I0, self._pixel(spacing, None), generator) + array[c]
        else:
            axis = 0 if slice_axis is None else slice_axis
            pixel = self._pixel(spacing, axis)
            for c in range(array.shape[0]):
                moved = np.moveaxis(array[c], axis, 0)
                out = np.moveaxis(noisy[c], axis, 0)
                for index in range(moved.shape[0]):
                    out[index] = moved[index] + self.slice_noise(moved[index], I0, pixel, generator)
        result = torch.from_numpy(noisy.astype(np.float32))
        return result if torch.is_tensor(clean) else result.numpy()

    def _pixel(self, spacing, slice_axis) -> float:
        if self.pixel_mm is not None:
            return float(self.pixel_mm)
        if spacing is None:
            raise ValueError("low_dose_ct needs the pixel spacing: the image has none; set pixel_mm")
        in_plane = [float(s) for i, s in enumerate(spacing) if i != slice_axis][-2:]
        return math.sqrt(in_plane[0] * in_plane[1])  # square pixels assumed; anisotropy averaged

    def slice_noise(self, hu: np.ndarray, I0: float, pixel_mm: float, generator: torch.Generator) -> np.ndarray:
        """The HU noise of one slice (H, W) scanned at ``I0``."""
        from skimage.transform import iradon, radon

        height, width = hu.shape
        side = max(height, width)
        mu = np.zeros((side, side))  # air around a non-square image
        top, left = (side - height) // 2, (side - width) // 2
        mu[top:top + height, left:left + width] = np.clip(self.mu_water * (1 + hu / 1000.0), 0, None)
        angles = np.linspace(0.0, 180.0, self.views, endpoint=False)
        line = radon(mu, theta=angles, circle=False) * pixel_mm  # line integrals, unitless
        delta = self.line_integral_noise(line, I0, generator)
        # FBP of the noise alone; iradon inverts radon's pixel sums, hence / pixel_mm.
        noise_mu = iradon(delta / pixel_mm, theta=angles, filter_name=self.filter, circle=False,
                          output_size=side)
        return 1000.0 * noise_mu[top:top + height, left:left + width] / self.mu_water

    def line_integral_noise(self, line: np.ndarray, I0: float, generator: torch.Generator) -> np.ndarray:
        """Noisy minus clean line integrals at dose ``I0``."""
        expected = I0 * np.exp(-line)
        if self.image_I0 is None:  # a noise-free image: the counts themselves
            counts = torch.poisson(torch.from_numpy(expected), generator=generator).numpy()
            counts = counts + self.electronic_sd * torch.randn(line.shape, generator=generator,
                                                                 dtype=torch.float64).numpy()
            return -np.log(np.maximum(counts, 1.0) / I0) - line
        # Noise insertion: the variance of -log(counts) is (N + e^2) / N^2 at mean count N.
        image = float(self.image_I0) * np.exp(-line)
        variance = ((expected + self.electronic_sd**2) / np.maximum(expected, 1e-12) ** 2
                    - (image + self.electronic_sd**2) / np.maximum(image, 1e-12) ** 2)
        gauss = torch.randn(line.shape, generator=generator, dtype=torch.float64).numpy()
        return np.sqrt(np.clip(variance, 0, None)) * gauss


@toolbox.hookimpl
def register_noise_models(register):
    register("low_dose_ct", LowDoseCT, aliases=("lowdose_ct",), example={"I0": 1e4, "views": 32, "pixel_mm": 1.0})
