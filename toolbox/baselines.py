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


def rician_mean(amplitude: np.ndarray) -> np.ndarray:
    """E[M] / sigma of a Rician magnitude M = |A + n1 + i n2| (n ~ N(0, sigma)) at A / sigma =
    ``amplitude``: sqrt(pi/2) L_1/2(-A^2 / 2 sigma^2), written with the exponentially scaled
    Bessel functions so that it stays finite at any amplitude."""
    from scipy.special import i0e, i1e

    half = np.asarray(amplitude, dtype=np.float64) ** 2 / 4.0  # t / 2 with t = A^2 / (2 sigma^2)
    return np.sqrt(np.pi / 2.0) * ((1.0 + 2.0 * half) * i0e(half) + 2.0 * half * i1e(half))


def rician_amplitude(mean: np.ndarray) -> np.ndarray:
    """The inverse of ``rician_mean``: the amplitude A / sigma whose Rician magnitude has the
    mean E[M] / sigma = ``mean``; 0 at or below the mean of pure noise (sqrt(pi/2))."""
    grid = np.linspace(0.0, 40.0, 8001)
    means = rician_mean(grid)
    mean = np.asarray(mean, dtype=np.float64)
    # Above the table E[M] = A + sigma^2 / 2A + ..., so A = sqrt(E[M]^2 - sigma^2) to that order.
    return np.where(mean < means[-1], np.interp(mean, means, grid, left=0.0),
                    np.sqrt(np.maximum(mean**2 - 1.0, 0.0)))


def rician_bm3d_or_bm4d(noisy: np.ndarray, sigma: float, denoise=None) -> np.ndarray:
    """BM3D / BM4D for Rician noise (magnitude MR) with its bias removed: BM3D / BM4D given
    the noise SD estimates the mean of the magnitude, which Rician noise lifts above the
    signal (to 1.25 sigma where there is none); the exact inverse of that mean
    (``rician_amplitude``) maps it back to the signal.  Without it every classical filter
    keeps the biased background, which flatters a model trained on Rician noise.  (Foi 2011
    stabilises the variance first; this keeps BM3D / BM4D's one noise SD, which Rician noise
    has wherever the signal is a few SD above zero.)  ``denoise(image, sigma)`` replaces BM3D
    / BM4D (tests)."""
    denoised = (denoise or bm3d_or_bm4d)(noisy.astype(np.float32), float(sigma)).astype(np.float64)
    return (float(sigma) * rician_amplitude(denoised / float(sigma))).astype(np.float32)


def optional_name(spatial_dims: int, suffix: str) -> str | None:
    """'BM3D + suffix' / 'BM4D + suffix' (a baseline's name) if that package is installed."""
    optional = "bm3d" if spatial_dims == 2 else "bm4d"
    return f"{optional.upper()} + {suffix}" if importlib.util.find_spec(optional) is not None else None


def available_baselines(spatial_dims: int) -> dict:
    methods = {"identity (noisy)": identity, "gaussian filter": gaussian_filter,
               "total variation": total_variation, "non-local means": non_local_means}
    optional = "bm3d" if spatial_dims == 2 else "bm4d"
    if importlib.util.find_spec(optional) is not None:
        methods[optional.upper()] = bm3d_or_bm4d
    return methods
