"""ResUNet with residual learning and auto-context (seed 000 section 4; medSynthesis).

- ``ConvBlock``: two 3x3 convolutions, each followed by batch norm and ReLU.
- ``ResidualUnit``: a ConvBlock plus a "bridge" 1x1 convolution of the same input, added.
- ``UpResBlock``: a transposed convolution of the deeper input, the skip ("bridge") input
  centre-cropped to its size, concatenated, then a ConvBlock.
- ``resunet``: the U-shaped generator.  Its input is a 2.5D stack (``k`` adjacent slices as
  channels, ``data.context_slices: k``) and its output is added to the stack's *middle
  slice* (residual learning).  ``stages: 2`` adds the auto-context refinement: a second
  ResUNet sees the stack together with the first stage's estimate and refines it.
Any discriminator works with it; ``recipes/resunet_microscopy.yaml`` uses ``wgan_critic``.
"""

from __future__ import annotations

import torch
from monai.networks.layers import Conv, Norm, Pool

import toolbox
from toolbox.nn import pad_to_multiple


class ConvBlock(torch.nn.Module):
    def __init__(self, dims, in_channels, out_channels):
        super().__init__()
        conv = Conv[Conv.CONV, dims]
        self.body = torch.nn.Sequential(
            conv(in_channels, out_channels, 3, padding=1), Norm[Norm.BATCH, dims](out_channels),
            torch.nn.ReLU(inplace=True),
            conv(out_channels, out_channels, 3, padding=1), Norm[Norm.BATCH, dims](out_channels),
            torch.nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.body(x)


class ResidualUnit(torch.nn.Module):
    def __init__(self, dims, in_channels, out_channels):
        super().__init__()
        self.block = ConvBlock(dims, in_channels, out_channels)
        self.bridge = Conv[Conv.CONV, dims](in_channels, out_channels, 1)

    def forward(self, x):
        return self.block(x) + self.bridge(x)


def center_crop(x: torch.Tensor, size) -> torch.Tensor:
    starts = [(s - t) // 2 for s, t in zip(x.shape[2:], size)]
    return x[(slice(None), slice(None)) + tuple(slice(a, a + t) for a, t in zip(starts, size))]


class UpResBlock(torch.nn.Module):
    def __init__(self, dims, in_channels, bridge_channels, out_channels):
        super().__init__()
        self.up = Conv[Conv.CONVTRANS, dims](in_channels, out_channels, 2, stride=2)
        self.block = ConvBlock(dims, out_channels + bridge_channels, out_channels)

    def forward(self, x, bridge):
        up = self.up(x)
        return self.block(torch.cat([up, center_crop(bridge, up.shape[2:])], dim=1))


class _ResUNetStage(torch.nn.Module):
    def __init__(self, dims, in_channels, out_channels, base, levels):
        super().__init__()
        widths = [base * 2**i for i in range(levels + 1)]
        self.down = torch.nn.ModuleList()
        previous = in_channels
        for width in widths:
            self.down.append(ResidualUnit(dims, previous, width))
            previous = width
        self.pool = Pool[Pool.MAX, dims](2)
        self.up = torch.nn.ModuleList(
            UpResBlock(dims, widths[i + 1], widths[i], widths[i]) for i in reversed(range(levels))
        )
        self.out = Conv[Conv.CONV, dims](widths[0], out_channels, 1)

    def forward(self, x):
        skips = []
        for index, unit in enumerate(self.down):
            x = unit(x)
            if index < len(self.down) - 1:
                skips.append(x)
                x = self.pool(x)
        for block in self.up:
            x = block(x, skips.pop())
        return self.out(x)


class ResUNet(torch.nn.Module):
    """ResUNet generator for 2.5D stacks: output = network(stack) + middle slice.

    ``in_channels`` = slices x image channels (the core passes it from
    ``data.context_slices``); ``base_filters`` 64 and ``levels`` 3 as in medSynthesis;
    ``stages: 2`` refines with auto-context.  Any input size (padded to 2**levels).
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 3, out_channels: int = 1,
                 base_filters: int = 64, levels: int = 3, stages: int = 1):
        super().__init__()
        if in_channels % out_channels or (in_channels // out_channels) % 2 == 0:
            raise ValueError(f"in_channels ({in_channels}) must be an odd number of slices times "
                             f"out_channels ({out_channels}) for a middle slice to exist")
        if stages not in (1, 2):
            raise ValueError(f"stages must be 1 or 2, got {stages}")
        self.out_channels = out_channels
        self.middle = (in_channels // out_channels) // 2
        self.multiple = 2**levels
        self.size_multiple = self.multiple  # what toolbox.export pads inputs to
        self.stages = torch.nn.ModuleList(
            _ResUNetStage(spatial_dims, in_channels + (out_channels if s else 0), out_channels,
                          base_filters, levels)
            for s in range(stages)
        )

    def forward(self, x):
        padded, crop = pad_to_multiple(x, self.multiple)
        c = self.out_channels
        middle = padded[:, self.middle * c:(self.middle + 1) * c]
        estimate = self.stages[0](padded) + middle
        for stage in self.stages[1:]:  # auto-context: the stack plus the current estimate
            estimate = stage(torch.cat([padded, estimate], dim=1)) + middle
        return estimate[crop]


@toolbox.hookimpl
def register_generators(register):
    register("resunet", ResUNet, aliases=("resunet_lres",),
             example={"base_filters": 4, "levels": 2, "stages": 2})
