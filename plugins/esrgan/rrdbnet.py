"""RRDBNet: ESRGAN's generator (Wang et al. 2018), as seed 002 uses it, in 2D and 3D.

Residual-in-Residual Dense Blocks at the input's resolution, then ``log2(scale)`` stages
of nearest-neighbour 2x upsampling and a convolution, then two convolutions at the output
resolution.  Most of the work is done at the low resolution, which is what makes the
network affordable at 2x and 4x.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SCALES = (1, 2, 4)


def _conv(spatial_dims: int):
    return torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d


def msra_scaled_(convs, factor: float) -> None:
    """MSRA (He) initialisation scaled down by ``factor``: ESRGAN's "smaller initialisation",
    which keeps the many residual branches from blowing up the output at the start."""
    for conv in convs:
        torch.nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
        conv.weight.data.mul_(factor)
        if conv.bias is not None:
            conv.bias.data.zero_()


class ResidualDenseBlock(torch.nn.Module):
    """Five densely connected convolutions (each sees the block input and every earlier
    output); the last one's output, scaled by ``residual_scale``, is added to the input."""

    def __init__(self, spatial_dims: int, features: int, growth: int, residual_scale: float, init_scale: float):
        super().__init__()
        conv = _conv(spatial_dims)
        self.convs = torch.nn.ModuleList(
            conv(features + i * growth, growth if i < 4 else features, 3, padding=1) for i in range(5))
        self.residual_scale = residual_scale
        msra_scaled_(self.convs, init_scale)

    def forward(self, x):
        features = [x]
        for conv in self.convs[:-1]:
            features.append(F.leaky_relu(conv(torch.cat(features, 1)), 0.2))
        return x + self.residual_scale * self.convs[-1](torch.cat(features, 1))


class RRDB(torch.nn.Module):
    """Three residual dense blocks inside one more scaled residual connection."""

    def __init__(self, spatial_dims: int, features: int, growth: int, residual_scale: float, init_scale: float):
        super().__init__()
        self.body = torch.nn.Sequential(*(ResidualDenseBlock(spatial_dims, features, growth, residual_scale,
                                                             init_scale) for _ in range(3)))
        self.residual_scale = residual_scale

    def forward(self, x):
        return x + self.residual_scale * self.body(x)


class RRDBNet(torch.nn.Module):
    """ESRGAN's generator: ``(N, C, *size) -> (N, C, *(scale * size))``.

    ``blocks`` RRDBs of ``features`` channels with dense ``growth`` (ESRGAN and seed 002:
    23, 64, 32; the CPU default is far smaller), ``residual_scale`` 0.2, leaky ReLU 0.2,
    MSRA initialisation scaled by ``init_scale`` 0.1 in the dense blocks.  ``scale``: 1, 2
    or 4 (the core sets it from ``data.scale``); at 1 it is a plain denoiser.

    ``output: residual`` (the default here) adds the input, upsampled (bilinear /
    trilinear) to the output size, so that the network learns the correction rather than
    rebuilding the image; ``direct`` is ESRGAN's (the network draws the whole image).
    ``noise_level_map`` (set by the core) adds an input channel for the noise level.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1, scale: int = 1,
                 features: int = 32, growth: int = 16, blocks: int = 2, residual_scale: float = 0.2,
                 init_scale: float = 0.1, output: str = "residual", noise_level_map: bool = False):
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(map(str, SCALES))}, got {scale}")
        if output not in ("residual", "direct"):
            raise ValueError(f"output must be residual or direct, got {output!r}")
        if output == "residual" and in_channels != out_channels:
            raise ValueError("output: residual needs in_channels == out_channels")
        if blocks < 1 or features < 1 or growth < 1:
            raise ValueError("blocks, features and growth must be at least 1")
        conv = _conv(spatial_dims)
        self.spatial_dims, self.scale, self.output, self.image_channels = spatial_dims, scale, output, in_channels
        self.conv_first = conv(in_channels + int(noise_level_map), features, 3, padding=1)
        self.body = torch.nn.Sequential(*(RRDB(spatial_dims, features, growth, residual_scale, init_scale)
                                          for _ in range(blocks)))
        self.conv_body = conv(features, features, 3, padding=1)
        self.upsample = torch.nn.ModuleList(conv(features, features, 3, padding=1)
                                            for _ in range(int(math.log2(scale))))
        self.conv_hr = conv(features, features, 3, padding=1)
        self.conv_last = conv(features, out_channels, 3, padding=1)

    def forward(self, x):
        image = x[:, : self.image_channels]
        features = self.conv_first(x)
        features = features + self.conv_body(self.body(features))
        for conv in self.upsample:
            features = F.leaky_relu(conv(F.interpolate(features, scale_factor=2, mode="nearest")), 0.2)
        out = self.conv_last(F.leaky_relu(self.conv_hr(features), 0.2))
        if self.output == "residual":
            if self.scale > 1:
                mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
                image = F.interpolate(image, scale_factor=self.scale, mode=mode, align_corners=False)
            out = out + image
        return out
