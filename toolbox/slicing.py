"""Slices of a volume as a 2D (or 2.5D) model takes them."""

from __future__ import annotations

import numpy as np


def slice_with_context(array: np.ndarray, axis: int, index: int, context: int = 1) -> np.ndarray:
    """Slice ``index`` of ``array`` ``(C, *spatial)`` along a spatial axis; with ``context``
    > 1, with its neighbours as channels (``context`` slices per channel, edges repeated),
    as a 2.5D model takes them."""
    if context == 1:
        return np.take(array, index, axis=axis + 1)
    count = array.shape[axis + 1]
    half = context // 2
    neighbours = np.clip(np.arange(index - half, index + half + 1), 0, count - 1)
    stack = np.take(array, neighbours, axis=axis + 1)  # (C, ..k.., ...)
    stack = np.moveaxis(stack, axis + 1, 1)  # (C, k, a, b)
    return stack.reshape(-1, *stack.shape[2:])  # slice-major per channel
