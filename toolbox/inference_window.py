"""How large a sliding window a trained model denoises with, and how much windows overlap.

By default a model denoises in windows of its training patch (``--window patch``), as its
exports do.  A fully convolutional network takes larger windows too, with fewer borders to
compute twice, but whether it denoises them as well depends on the network: measured on
the shipped models (BENCHMARKS.md, "Inference speed"), a whole 512x512 CT slice in one
window is 1.9x faster at -0.01 dB and the whole MR volume +0.04 dB, while the X-ray and
fluorescence U-Nets, whose deepest features span more than their 96x96 training patches,
lose 0.17 and 0.30 dB on windows larger than those.  So growing the windows
(``--window auto``: the whole image up to a voxel budget, the overlap kept at the patch's
in voxels) or choosing a size is the user's call, per model.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# One window holds at most this many voxels (a 1024x1024 slice, a 128x128x64 block): with
# the shipped networks that is under 1 GB of activations (about 650 bytes per voxel for
# `mr3d`), so a volume of any size is denoised in bounded memory.
WINDOW_VOXELS = 2**20

WINDOW_CHOICES = ("patch (the training patch, the default), auto (the whole image up to 2^20 voxels) "
                  "or a size such as 256 or 128x128x64")


@dataclass(frozen=True)
class Windows:
    """Sliding-window settings for one image: MONAI's ``roi_size``, per-axis ``overlap``
    fractions and how many windows go through the network at once."""

    roi_size: tuple
    overlap: tuple
    batch: int


def size_step(patch) -> int:
    """The largest power of two that divides every side of the training patch: a window
    over the budget shrinks in steps of it (a multiple of what the network's down-samplings
    need, so it pads nothing)."""
    return max(1, min(int(side) & -int(side) for side in patch))


def parse_window(text: str | None, spatial_dims: int):
    """``--window``: 'patch' (also when not given), 'auto' (None here), or a size per axis."""
    if text is None or text == "patch":
        return "patch"
    if text == "auto":
        return None
    match = re.fullmatch(r"\d+(x\d+)*", text.strip())
    sides = [int(v) for v in text.strip().split("x")] if match else []
    if not sides or any(side < 1 for side in sides) or len(sides) not in (1, spatial_dims):
        raise ValueError(f"--window must be {WINDOW_CHOICES} (one size or {spatial_dims} sizes), got {text!r}")
    return tuple(sides * spatial_dims if len(sides) == 1 else sides)


def plan_windows(patch, shape, overlap: float, window=None, max_voxels: int = WINDOW_VOXELS) -> Windows:
    """Windows for an image of spatial ``shape``, for a network trained on ``patch``.

    ``window`` None: the whole image (at least the patch) when it holds at most
    ``max_voxels``, else the longest sides shortened by ``size_step`` until it does (never
    below the patch); 'patch': the training patch, as exports tile; a tuple: that
    size.  The overlap in voxels is the patch's (``overlap`` x patch side), as a fraction of
    each window side; a window that covers its axis needs none.
    """
    patch = tuple(int(p) for p in patch)
    if window == "patch":
        roi = patch
    elif window is not None:
        roi = tuple(int(w) for w in window)
    else:
        step = size_step(patch)
        roi = [max(p, s) for p, s in zip(patch, shape)]  # networks pad to their own multiple
        while math.prod(roi) > max_voxels:
            shrinkable = [axis for axis in range(len(roi)) if roi[axis] - step >= patch[axis]]
            if not shrinkable:
                break
            longest = max(shrinkable, key=lambda axis: roi[axis])
            roi[longest] -= step
        roi = tuple(roi)
    if window == "patch":
        fractions = tuple(float(overlap) for _ in roi)
    else:
        fractions = tuple(0.0 if r >= s else min(float(overlap) * p / r, float(overlap))
                          for r, s, p in zip(roi, shape, patch))
    batch = max(1, min(4, max_voxels // math.prod(roi)))
    return Windows(roi, fractions, batch)
