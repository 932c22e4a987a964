"""Small network utilities that plugins share (public API, used by the built-ins too)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

NORMS = ("batch", "instance", "none")


def check_norm(kind: str) -> str:
    """``kind`` if it names a normalisation ``norm_layer`` builds, else a ``ValueError``."""
    if kind not in NORMS:
        raise ValueError(f"norm must be {', '.join(NORMS[:-1])} or {NORMS[-1]}, got {kind!r}")
    return kind


def norm_layer(kind: str, spatial_dims: int, channels: int, affine: bool = True) -> torch.nn.Module:
    """BatchNorm, InstanceNorm (``affine`` scale and shift) or nothing, in 2D or 3D."""
    from monai.networks.layers import Norm

    check_norm(kind)
    if kind == "batch":
        return Norm[Norm.BATCH, spatial_dims](channels)
    if kind == "instance":
        return Norm[Norm.INSTANCE, spatial_dims](channels, affine=affine)
    return torch.nn.Identity()


def first_output(output) -> torch.Tensor:
    """The full-size image of a generator's output: the tensor, or a tuple's first item
    (networks with deep supervision return the image at several scales)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def all_outputs(output) -> list[torch.Tensor]:
    """A generator's or discriminator's outputs as a list (one item for a plain tensor)."""
    return list(output) if isinstance(output, (tuple, list)) else [output]


def pad_spatial(x: torch.Tensor, pads: list[int], mode: str = "reflect") -> torch.Tensor:
    """``F.pad`` (last axis first) that falls back from reflection to edge replication on
    axes too short to reflect (reflection needs the pad smaller than the axis)."""
    if mode == "reflect":
        spatial = x.shape[2:][::-1]
        if any(pads[2 * i] >= s or pads[2 * i + 1] >= s for i, s in enumerate(spatial[: len(pads) // 2])):
            mode = "replicate"
    return F.pad(x, pads, mode=mode)


def separable_blur(x: torch.Tensor, kernel_1d: torch.Tensor, dilation: int) -> torch.Tensor:
    """Blur every spatial axis of ``x`` (N, C, *spatial) with a dilated 1D kernel, reflect-padded."""
    dims = x.ndim - 2
    channels = x.shape[1]
    taps = kernel_1d.numel()
    reach = dilation * (taps // 2)
    conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    for axis in range(dims):
        shape = [1] * dims
        shape[axis] = taps
        weight = kernel_1d.to(x).reshape(1, 1, *shape).repeat(channels, 1, *[1] * dims)
        pad = [0, 0] * dims
        pad[2 * (dims - 1 - axis)] = pad[2 * (dims - 1 - axis) + 1] = reach
        padded = pad_spatial(x, pad)
        dilations = [1] * dims
        dilations[axis] = dilation
        x = conv(padded, weight, groups=channels, dilation=tuple(dilations))
    return x


# The B3-spline: the a-trous wavelet's smoothing kernel (ADL's pyramid, detail discriminators).
B3_SPLINE = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def fine_detail(x: torch.Tensor) -> torch.Tensor:
    """The finest a-trous wavelet band of ``x`` (N, C, *spatial): ``x`` minus its B3-spline
    blur, i.e. what lies above about a quarter of the sampling frequency (texture, noise)."""
    return x - separable_blur(x, B3_SPLINE, 1)


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
    return pad_spatial(x, pads, mode), crop


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
