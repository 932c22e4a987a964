"""Noise-level conditioning (FFDNet, DRUNet): the generator is told how noisy its input is.

With ``data.noise_level_map: true`` the generator gets one more input channel, constant,
holding the noise's standard deviation in normalised units.  In training it is measured on
each patch (the RMS of noisy - clean: exact for any noise model and for real pairs); in use
it is the user's ``--sigma`` (in the image's units) or, when not given, an estimate from the
image itself (``toolbox.baselines.estimate_noise_sigma``), converted by the normaliser.  A
network that knows the level can leave weak noise (and the detail under it) alone and
remove strong noise hard, instead of one compromise for every level.
"""

from __future__ import annotations

import torch


def measured_level(noisy: torch.Tensor, clean: torch.Tensor) -> float:
    """The noise level of a training patch: the RMS of ``noisy - clean``."""
    return float(torch.sqrt(torch.mean((noisy.double() - clean.double()) ** 2)))


def rms_difference(noisy, clean) -> float:
    """The true noise SD of a synthetic pair in its units (arrays): RMS of ``noisy - clean``."""
    import numpy as np

    return float(np.sqrt(np.mean((np.asarray(noisy, dtype=np.float64) - clean) ** 2)))


def with_level_channel(image: torch.Tensor, level: float, batched: bool = False) -> torch.Tensor:
    """``image`` ``(C, *spatial)`` (or ``(N, C, *spatial)`` when ``batched``) with a last,
    constant channel of ``level``."""
    axis = 1 if batched else 0
    shape = list(image.shape)
    shape[axis] = 1
    return torch.cat([image, torch.full(shape, float(level), dtype=image.dtype, device=image.device)], dim=axis)


class NoiseLevelInput(torch.nn.Module):
    """A noise-conditional generator applied at a fixed level (normalised units)."""

    def __init__(self, network: torch.nn.Module, level: float):
        super().__init__()
        self.network = network
        self.level = float(level)

    def forward(self, x):
        return self.network(with_level_channel(x, self.level, batched=True))
