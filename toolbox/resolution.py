"""Super-resolution outputs: interpolating an input onto a model's larger output grid.

A ``scale`` x output puts ``scale`` voxels where the input had one, tiling the same
physical extent (the voxel centres of a 2x grid lie a quarter of the old spacing either
side of the old centres).  ``upsample`` interpolates on exactly that grid: it is what a
super-resolution model is compared with (bicubic in 2D, tricubic in 3D), and how a
classical denoiser's low-resolution output is brought to the reference's size.
"""

from __future__ import annotations

import numpy as np


def upsample(units: np.ndarray, shape, order: int = 3) -> np.ndarray:
    """``units`` ``(C, *spatial)`` interpolated (cubic B-spline by default) to ``(C, *shape)``,
    each axis by a whole factor, with pixel areas aligned (``grid_mode``)."""
    from scipy import ndimage

    shape = tuple(int(s) for s in shape)
    if tuple(units.shape[1:]) == shape:
        return units
    factors = [s / a for s, a in zip(shape, units.shape[1:])]
    if any(f < 1 or abs(f - round(f)) > 1e-9 for f in factors):
        raise ValueError(f"cannot upsample {units.shape[1:]} to {shape}: not whole factors")
    return np.stack([ndimage.zoom(channel.astype(np.float64), factors, order=order, mode="grid-mirror",
                                  grid_mode=True) for channel in units]).astype(np.float32)


def scale_factors(input_shape, output_shape) -> tuple[float, ...]:
    """Factors per spatial axis from an input ``(C, *spatial)`` to an output: whole numbers
    (a finer grid) or their inverses (a coarser one, e.g. a low-resolution input)."""
    factors = []
    for i, o in zip(input_shape[1:], output_shape[1:]):
        if o % i == 0:
            factors.append(o // i)
        elif i % o == 0:
            factors.append(1.0 / (i // o))
        else:
            raise ValueError(f"output {tuple(output_shape[1:])} is not a whole multiple or divisor of input "
                             f"{tuple(input_shape[1:])}")
    return tuple(factors)
