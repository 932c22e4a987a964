"""ADL's networks (seed 003): the Efficient-UNet denoiser and its discriminator, 2D and 3D."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv

from toolbox.nn import norm_layer, pad_to_multiple


# -- building blocks -------------------------------------------------------------------------
class ResidualBlock(torch.nn.Module):
    """conv(stride)-norm-ReLU-conv-norm, plus a 1x1 (strided) shortcut, then ReLU."""

    def __init__(self, dims, in_channels, out_channels, stride=1, norm="batch", kernel_size=3):
        super().__init__()
        conv = Conv[Conv.CONV, dims]
        bias = norm == "none"
        pad = kernel_size // 2
        self.body = torch.nn.Sequential(
            conv(in_channels, out_channels, kernel_size, stride=stride, padding=pad, bias=bias),
            norm_layer(norm, dims, out_channels), torch.nn.ReLU(inplace=True),
            conv(out_channels, out_channels, kernel_size, padding=pad, bias=bias),
            norm_layer(norm, dims, out_channels),
        )
        self.shortcut = conv(in_channels, out_channels, 1, stride=stride, bias=bias)

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


class ContentEnhancer(torch.nn.Module):
    """Parallel dilated convolutions (dilation 1, 2, 4) on the noisy input, fused.

    Gives the last decoder stage a wide view of the raw input (the paper's content
    enhancer): three ``kernel_size`` convolutions of ``channels/2`` filters, concatenated,
    norm-ReLU, a fusing convolution, norm, plus a 1x1 shortcut, then leaky ReLU (0.1).
    """

    def __init__(self, dims, in_channels, channels, norm="batch", kernel_size=7):
        super().__init__()
        conv = Conv[Conv.CONV, dims]
        bias = norm == "none"
        half = max(channels // 2, 1)
        self.branches = torch.nn.ModuleList(
            conv(in_channels, half, kernel_size, padding=d * (kernel_size // 2), dilation=d, bias=bias)
            for d in (1, 2, 4)
        )
        self.fuse = torch.nn.Sequential(
            norm_layer(norm, dims, 3 * half), torch.nn.ReLU(inplace=True),
            conv(3 * half, channels, kernel_size, padding=kernel_size // 2, bias=bias),
            norm_layer(norm, dims, channels),
        )
        self.shortcut = conv(in_channels, channels, 1, bias=bias)

    def forward(self, x):
        fused = self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))
        return F.leaky_relu(fused + self.shortcut(x), 0.1)


class DecoderBlock(torch.nn.Module):
    """Transposed convolution (x2), concatenate the skip, residual block."""

    def __init__(self, dims, in_channels, skip_channels, out_channels, norm="batch"):
        super().__init__()
        self.up = Conv[Conv.CONVTRANS, dims](in_channels, out_channels, 3, stride=2, padding=1,
                                              output_padding=1, bias=False)
        self.block = ResidualBlock(dims, out_channels + skip_channels, out_channels, norm=norm)

    def forward(self, x, skip):
        return self.block(torch.cat([self.up(x), skip], dim=1))


class Transformer(torch.nn.Module):
    """An output head: ``depth`` residual blocks halving the width, then a 1x1 convolution.

    For the denoiser the result goes through a sigmoid (an image in 0..1); for the
    discriminator through leaky ReLU first and no sigmoid (a map of logits).
    """

    def __init__(self, dims, in_channels, out_channels, depth, norm="batch", image=True, widths=None):
        super().__init__()
        widths = widths or [max(in_channels // 2 ** (i + 1), 1) for i in range(depth)]
        blocks, channels = [], in_channels
        for width in widths:
            blocks.append(ResidualBlock(dims, channels, width, norm=norm))
            channels = width
        self.blocks = torch.nn.Sequential(*blocks)
        self.image = image
        self.out = Conv[Conv.CONV, dims](channels, out_channels, 1, bias=not image)

    def forward(self, x):
        x = self.blocks(x)
        if not self.image:
            return self.out(F.leaky_relu(x, 0.1))
        return self.out(x)


def _check_filters(filters, bridge, name):
    if len(filters) != 3 or not all(isinstance(f, int) and f > 0 for f in (*filters, bridge)):
        raise ValueError(f"{name}: filters needs three positive integers and a positive bridge, "
                         f"got {filters!r} and {bridge!r}")


# -- networks --------------------------------------------------------------------------------
class EfficientUNet(torch.nn.Module):
    """ADL's Efficient-UNet denoiser: returns (full, 1/2, 1/4 scale) images.

    ``filters``/``bridge``: encoder widths (paper 96, 128, 160 and 192).  ``output:
    sigmoid`` (paper) keeps images in 0..1; ``linear`` suits data normalised beyond it;
    ``residual`` adds each head's output to the input (average-pooled to the head's scale;
    for 2.5D inputs, the middle slice), so the network learns the noise, not the image,
    and weak noise passes through without the blur of rebuilding the image.
    ``noise_level_map`` (set by the core from ``data.noise_level_map``) takes the noise
    level as one more input channel.
    Inputs of any size are padded to a multiple of 8 and cropped back (the 1/2 and 1/4
    outputs to the matching sizes).
    """

    size_multiple = 8  # three 2x down-samplings (toolbox.export pads inputs to it too)

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1,
                 filters=(96, 128, 160), bridge: int = 192, norm: str = "batch",
                 enhancer_kernel: int = 7, content_enhancer: bool = True, output: str = "sigmoid",
                 noise_level_map: bool = False):
        super().__init__()
        _check_filters(filters, bridge, "efficient_unet")
        if output not in ("sigmoid", "linear", "residual"):
            raise ValueError(f"output must be sigmoid, linear or residual, got {output!r}")
        if output == "residual" and in_channels % out_channels:
            raise ValueError(f"output: residual needs in_channels ({in_channels}) to be a multiple "
                             f"of out_channels ({out_channels})")
        d = spatial_dims
        self.out_channels = out_channels
        self.image_channels = in_channels  # a noise-level map (set by the core) is one channel more
        taken = in_channels + int(noise_level_map)
        f1, f2, f3 = filters
        self.enhancer = ContentEnhancer(d, taken, f1, norm, enhancer_kernel) if content_enhancer else None
        self.enc1 = ResidualBlock(d, taken, f1, norm=norm)
        self.enc2 = ResidualBlock(d, f1, f2, stride=2, norm=norm)
        self.enc3 = ResidualBlock(d, f2, f3, stride=2, norm=norm)
        self.bridge = ResidualBlock(d, f3, bridge, stride=2, norm=norm)
        self.dec1 = DecoderBlock(d, bridge, f3, f3, norm)
        self.dec2 = DecoderBlock(d, f3, f2, f2, norm)
        self.dec3 = DecoderBlock(d, f2, f1 * (2 if content_enhancer else 1), f1, norm)
        self.head_quarter = Transformer(d, f3, out_channels, 3, norm)
        self.head_half = Transformer(d, f2, out_channels, 2, norm)
        self.head_full = Transformer(d, f1, out_channels, 1, norm)
        self.output = output

    def forward(self, x):
        padded, crop = pad_to_multiple(x, self.size_multiple)
        s1 = self.enc1(padded)
        s2 = self.enc2(s1)
        s3 = self.enc3(s2)
        y = self.dec1(self.bridge(s3), s3)
        quarter = self.head_quarter(y)
        y = self.dec2(y, s2)
        half = self.head_half(y)
        skip = torch.cat([s1, self.enhancer(padded)], dim=1) if self.enhancer is not None else s1
        full = self.head_full(self.dec3(y, skip))
        outs = []
        if self.output == "residual":
            middle = (self.image_channels // self.out_channels) // 2 * self.out_channels
            source = padded[:, middle:middle + self.out_channels]
        for image, factor in ((full, 1), (half, 2), (quarter, 4)):
            if self.output == "sigmoid":
                image = torch.sigmoid(image)
            elif self.output == "residual":
                pooled = source if factor == 1 else average_pool(source, factor)
                image = image + pooled[(slice(None), slice(None)) + tuple(slice(0, n) for n in image.shape[2:])]
            # The full-size output is cropped with the input's own sizes (not ints computed
            # from them), so that a TorchScript trace crops any input size right.
            size = [s.stop if factor == 1 else math.ceil(s.stop / factor) for s in crop[2:]]
            outs.append(image[(slice(None), slice(None)) + tuple(slice(0, n) for n in size)])
        return tuple(outs)


def average_pool(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``x`` average-pooled by ``factor`` on every spatial axis (partial windows kept)."""
    if factor == 1:
        return x
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[x.ndim - 3]
    return pool(x, factor, ceil_mode=True)


class EfficientUNetDiscriminator(torch.nn.Module):
    """ADL's discriminator: Efficient-UNet shape, smaller; logit maps (bridge, full, 1/2, 1/4).

    ``filters``/``bridge``: paper 48, 64, 80 and 96 (the public code: 16, 32, 64 and 128).
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, filters=(48, 64, 80),
                 bridge: int = 96, norm: str = "batch"):
        super().__init__()
        _check_filters(filters, bridge, "efficient_unet_discriminator")
        d = spatial_dims
        f1, f2, f3 = filters
        self.enc1 = ResidualBlock(d, in_channels, f1, norm=norm)
        self.enc2 = ResidualBlock(d, f1, f2, stride=2, norm=norm)
        self.enc3 = ResidualBlock(d, f2, f3, stride=2, norm=norm)
        self.bridge = ResidualBlock(d, f3, bridge, stride=2, norm=norm)
        self.bridge_map = Conv[Conv.CONV, d](bridge, 1, 1)
        self.dec1 = DecoderBlock(d, bridge, f3, f3, norm)
        self.dec2 = DecoderBlock(d, f3, f2, f2, norm)
        self.dec3 = DecoderBlock(d, f2, f1, f1, norm)
        self.head_quarter = Transformer(d, f3, 1, 3, norm, image=False, widths=[f3, f3 // 2, f3 // 4])
        self.head_half = Transformer(d, f2, 1, 2, norm, image=False, widths=[f2, f2 // 2])
        self.head_full = Transformer(d, f1, 1, 1, norm, image=False, widths=[max(f1 // 2, 1)])

    def forward(self, x):
        padded, _ = pad_to_multiple(x, 8)
        s1 = self.enc1(padded)
        s2 = self.enc2(s1)
        s3 = self.enc3(s2)
        b = self.bridge(s3)
        y = self.dec1(b, s3)
        quarter = self.head_quarter(y)
        y = self.dec2(y, s2)
        half = self.head_half(y)
        full = self.head_full(self.dec3(y, s1))
        return (self.bridge_map(b), full, half, quarter)
