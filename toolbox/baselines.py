"""Classical denoisers that need no weights, to put a model's numbers in context.

All work on normalised images ``(C, *spatial)`` (2D or 3D) and take the noise level
``sigma`` in the same units: the true one when the noise is synthetic and known, otherwise
estimated from the noisy image (``skimage.restoration.estimate_sigma``).  BM3D / BM4D run
only when the user has installed the non-commercial ``bm3d`` / ``bm4d`` packages; they are
never a dependency.
"""

from __future__ import annotations

import importlib.util

import numpy as np


def estimate_noise_sigma(noisy: np.ndarray) -> float:
    from skimage.restoration import estimate_sigma

    return float(np.mean([estimate_sigma(channel) for channel in noisy]))


def _per_channel(function, noisy: np.ndarray, **options) -> np.ndarray:
    return np.stack([function(channel, **options) for channel in noisy]).astype(np.float32)


def identity(noisy, sigma):
    """The noisy input itself: the floor every method must beat."""
    return noisy.astype(np.float32)


def gaussian_filter(noisy, sigma):
    """Gaussian smoothing, 1 pixel standard deviation."""
    from scipy.ndimage import gaussian_filter as blur

    return _per_channel(blur, noisy, sigma=1.0)


def total_variation(noisy, sigma):
    """Total-variation denoising (Chambolle), weight = the noise level."""
    from skimage.restoration import denoise_tv_chambolle

    return _per_channel(denoise_tv_chambolle, noisy, weight=max(float(sigma), 1e-3))


def non_local_means(noisy, sigma):
    """Non-local means (fast mode), h = 0.8 sigma, 5-pixel patches, 6-pixel search."""
    from skimage.restoration import denoise_nl_means

    return _per_channel(denoise_nl_means, noisy, h=0.8 * float(sigma), sigma=float(sigma),
                        patch_size=5, patch_distance=6, fast_mode=True)


def bm3d_or_bm4d(noisy, sigma):
    """BM3D (2D) / BM4D (3D) given the noise level (only if installed)."""
    if noisy.ndim == 3:
        import bm3d

        return _per_channel(lambda c: bm3d.bm3d(c, sigma_psd=float(sigma)), noisy)
    import bm4d

    return _per_channel(lambda c: bm4d.bm4d(c, sigma_psd=float(sigma)), noisy)


def anscombe_bm3d_or_bm4d(normalised: np.ndarray, peak: float, read_sd: float = 0.0, denoise=None) -> np.ndarray:
    """BM3D / BM4D for Poisson(-Gaussian) noise, as it is meant to be used: the generalised
    Anscombe transform makes the noise of ``peak`` photons at level 1 (plus Gaussian read
    noise ``read_sd``, both in normalised units) Gaussian with unit SD, BM3D / BM4D denoises
    that, and the closed-form approximation of the exact unbiased inverse (Makitalo and Foi
    2011/2013) maps it back.  Without the transform the classical filters get one SD for a
    signal-dependent noise, which flatters a learnt model.  ``denoise(image, sigma)``
    replaces BM3D / BM4D (tests)."""
    counts = normalised.astype(np.float64) * peak
    read = read_sd * peak  # the read noise in photon units
    stabilised = 2.0 * np.sqrt(np.maximum(counts + 3.0 / 8.0 + read**2, 0.0))
    denoised = (denoise or bm3d_or_bm4d)(stabilised.astype(np.float32), 1.0).astype(np.float64)
    d = np.maximum(denoised, 1.0)  # below ~1.22 (no signal) the expansion diverges
    root = np.sqrt(1.5)
    inverse = 0.25 * d**2 + 0.25 * root / d - 11.0 / 8.0 / d**2 + 5.0 / 8.0 * root / d**3 - 1.0 / 8.0 - read**2
    return (np.maximum(inverse, 0.0) / peak).astype(np.float32)


def vst_name(spatial_dims: int) -> str | None:
    """The name of the Anscombe + BM3D / BM4D baseline, if that package is installed."""
    optional = "bm3d" if spatial_dims == 2 else "bm4d"
    return f"{optional.upper()} + Anscombe" if importlib.util.find_spec(optional) is not None else None


def available_baselines(spatial_dims: int) -> dict:
    methods = {"identity (noisy)": identity, "gaussian filter": gaussian_filter,
               "total variation": total_variation, "non-local means": non_local_means}
    optional = "bm3d" if spatial_dims == 2 else "bm4d"
    if importlib.util.find_spec(optional) is not None:
        methods[optional.upper()] = bm3d_or_bm4d
    return methods
