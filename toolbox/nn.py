"""Small network utilities that plugins share (public API, used by the built-ins too)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "reflect"):
    """Pad the spatial axes of ``x`` (N, C, *spatial) up to a multiple of ``multiple``.

    Returns the padded tensor and the slices that crop a same-size output back.
    Reflection needs the pad smaller than the axis; shorter axes fall back to replication.
    """
    spatial = x.shape[2:]
    needed = [(-s) % multiple for s in spatial]
    crop = (slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)
    if not any(needed):
        return x, crop
    pads = []
    for n in reversed(needed):  # F.pad takes the last axis first
        pads.extend([0, n])
    if mode == "reflect" and any(n >= s for n, s in zip(needed, spatial)):
        mode = "replicate"
    return F.pad(x, pads, mode=mode), crop


def init_normal_(module: torch.nn.Module, std: float = 0.02) -> torch.nn.Module:
    """pix2pix / DCGAN initialisation: convs N(0, std), norm scales N(1, std), biases 0."""
    for m in module.modules():
        if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear)):
            torch.nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
        elif isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm,
                            torch.nn.modules.instancenorm._InstanceNorm)):
            if getattr(m, "weight", None) is not None:
                torch.nn.init.normal_(m.weight, 1.0, std)
            if getattr(m, "bias", None) is not None:
                torch.nn.init.zeros_(m.bias)
    return module


def logits(output):
    """The logits of a discriminator output: a tensor, or the last item of a list/tuple."""
    return output[-1] if isinstance(output, (list, tuple)) else output
