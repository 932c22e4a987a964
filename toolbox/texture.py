"""Texture next to fidelity: the radially averaged power spectrum and its high-frequency share.

PSNR rewards blur; a GAN is trained to bring back the texture that blur removes.  The
measure (issue 13, ESRGAN's perception-distortion trade-off made visible): the power of an
image over the upper half of the spatial frequencies (0.25..0.5 cycles/pixel), divided by
the clean image's.  1.0 is the clean image's texture; below 1 is blur (a fidelity-trained
denoiser is typically 0.3-0.8); above 1 is noise left in or invented detail (the noisy
input is far above 1).  Computed over 2D planes (a 3D image's planes across its slice
axis, or its last axis), each mean-subtracted and Hann-windowed so that the image's edges
do not count as high frequencies.
"""

from __future__ import annotations

import numpy as np

BINS = 32  # radial bins between 0 and Nyquist (0.5 cycles/pixel)
HIGH = 0.25  # "high frequencies": the upper half of the band


def _planes(image: np.ndarray, slice_axis: int | None) -> list[np.ndarray]:
    """2D planes of a (C, *spatial) image, singleton axes dropped."""
    planes = []
    for channel in np.asarray(image, dtype=np.float64):
        if channel.ndim == 2:
            planes.append(channel)
            continue
        axis = slice_axis if slice_axis is not None else channel.ndim - 1
        planes.extend(np.moveaxis(channel, axis, 0))
    return [p for p in planes if min(p.shape) >= 8]


def radial_spectrum(image: np.ndarray, slice_axis: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres in cycles/pixel, mean power per bin) over the image's planes."""
    edges = np.linspace(0.0, 0.5, BINS + 1)
    total, counts = np.zeros(BINS), np.zeros(BINS)
    for plane in _planes(image, slice_axis):
        window = np.outer(np.hanning(plane.shape[0]), np.hanning(plane.shape[1]))
        spectrum = np.abs(np.fft.fft2((plane - plane.mean()) * window)) ** 2 / np.sum(window**2)
        radius = np.hypot(*np.meshgrid(np.fft.fftfreq(plane.shape[0]), np.fft.fftfreq(plane.shape[1]),
                                       indexing="ij"))
        which = np.digitize(radius.ravel(), edges) - 1
        inside = (which >= 0) & (which < BINS)
        total += np.bincount(which[inside], weights=spectrum.ravel()[inside], minlength=BINS)
        counts += np.bincount(which[inside], minlength=BINS)
    return 0.5 * (edges[1:] + edges[:-1]), total / np.maximum(counts, 1)


def high_frequency_ratio(image: np.ndarray, clean: np.ndarray, slice_axis: int | None = None) -> float:
    """The image's power over 0.25..0.5 cycles/pixel divided by the clean image's."""
    centres, power = radial_spectrum(image, slice_axis)
    _, reference = radial_spectrum(clean, slice_axis)
    high = centres >= HIGH
    denominator = float(np.sum(reference[high]))
    return float(np.sum(power[high]) / denominator) if denominator > 0 else float("nan")
