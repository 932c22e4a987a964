"""pix2pix for CT denoising (seed 004; Isola et al. 2017, junyanz's reference defaults).

- ``pix2pix_unet``: the U-Net generator, ``num_downs`` levels down and up with skips
  (7 by default: 128x128 patches reach a 1x1 bottleneck), 64 base filters, BatchNorm,
  dropout 0.5 in the innermost decoder levels, N(0, 0.02) init, tanh output.
- ``patchgan``: the 3-layer 70x70 PatchGAN on (input, output) pairs, built from MONAI's
  ``PatchDiscriminator``.
The conditional loss (cGAN + lambda * L1) is the ``paired_gan`` scheme with an ``l1``
loss and a ``gan`` loss.
"""

from __future__ import annotations

import torch
from monai.networks.layers import Conv

import toolbox
from toolbox.nn import check_norm, fine_detail, init_normal_, logits, norm_layer, pad_to_multiple


def _norm(norm: str, spatial_dims: int, channels: int):
    # pix2pix's instance norm has no learned scale and shift.
    return norm_layer(norm, spatial_dims, channels, affine=False)


class _SkipBlock(torch.nn.Module):
    """One U-Net level: down, the inner levels, up, then concatenate with the level's input."""

    def __init__(self, spatial_dims, outer, inner, in_channels=None, submodule=None,
                 outermost=False, innermost=False, norm="batch", dropout=0.0, out_channels=None):
        super().__init__()
        conv, convt = Conv[Conv.CONV, spatial_dims], Conv[Conv.CONVTRANS, spatial_dims]
        in_channels = in_channels or outer
        use_bias = norm != "batch"  # BatchNorm's shift makes a conv bias redundant
        down = conv(in_channels, inner, kernel_size=4, stride=2, padding=1, bias=use_bias)
        self.outermost = outermost
        if outermost:
            up = convt(inner * 2, out_channels, kernel_size=4, stride=2, padding=1)
            layers = [down, submodule, torch.nn.ReLU(True), up]
        elif innermost:
            up = convt(inner, outer, kernel_size=4, stride=2, padding=1, bias=use_bias)
            # No norm at the 1x1 bottleneck: statistics of a single value are meaningless.
            layers = [torch.nn.LeakyReLU(0.2, True), down, torch.nn.ReLU(True), up,
                      _norm(norm, spatial_dims, outer)]
        else:
            up = convt(inner * 2, outer, kernel_size=4, stride=2, padding=1, bias=use_bias)
            layers = [torch.nn.LeakyReLU(0.2, True), down, _norm(norm, spatial_dims, inner),
                      submodule, torch.nn.ReLU(True), up, _norm(norm, spatial_dims, outer)]
            if dropout:
                layers.append(torch.nn.Dropout(dropout))
        self.model = torch.nn.Sequential(*layers)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class Pix2PixUNet(torch.nn.Module):
    """pix2pix U-Net generator (2D/3D), any input size (padded to 2**num_downs and cropped).

    Images are expected in 0..1; they are mapped to -1..1 inside, as pix2pix trains, and
    the tanh output is mapped back.  ``output: linear`` drops the tanh for unclipped data;
    ``residual: true`` adds the input to the output (learns the noise instead of the image).
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1,
                 num_downs: int = 7, base_filters: int = 64, norm: str = "batch",
                 dropout: float = 0.5, output: str = "tanh", residual: bool = False):
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"num_downs must be at least 5, got {num_downs}")
        check_norm(norm)
        if output not in ("tanh", "linear"):
            raise ValueError(f"output must be tanh or linear, got {output!r}")
        if residual and in_channels != out_channels:
            raise ValueError("residual needs in_channels == out_channels")
        f = base_filters
        block = _SkipBlock(spatial_dims, f * 8, f * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            block = _SkipBlock(spatial_dims, f * 8, f * 8, submodule=block, norm=norm, dropout=dropout)
        for outer, inner in ((f * 4, f * 8), (f * 2, f * 4), (f, f * 2)):
            block = _SkipBlock(spatial_dims, outer, inner, submodule=block, norm=norm)
        self.model = _SkipBlock(spatial_dims, f, f, in_channels=in_channels, submodule=block,
                                outermost=True, out_channels=out_channels)
        self.multiple = 2 ** num_downs
        self.size_multiple = self.multiple  # what toolbox.export pads inputs to
        self.output = output
        self.residual = residual
        init_normal_(self)

    def forward(self, x):
        padded, crop = pad_to_multiple(x, self.multiple)
        out = self.model(padded * 2 - 1)
        if self.residual:
            out = out + (padded * 2 - 1)
        if self.output == "tanh":
            out = torch.tanh(out)
        return ((out + 1) / 2)[crop]


class PatchGAN(torch.nn.Module):
    """PatchGAN discriminator (pix2pix "basic": 3 layers, 70x70 receptive field in 2D).

    MONAI's ``PatchDiscriminator`` with pix2pix's settings; returns the logit map only.

    ``detail`` > 0 (not in pix2pix; for texture fine-tuning): the discriminator judges only
    the finest wavelet band of what it is shown (``toolbox.nn.fine_detail``, above about a
    quarter of the sampling frequency), multiplied by ``detail``.  A blurred output and a
    clean image differ there and hardly anywhere else, and in normalised CT units that band
    is about 0.005-0.01: scaled up, it is what the first layer sees.  Use it with ``norm:
    none``: real and fake batches pass the discriminator separately, so batch (and
    instance) normalisation rescales each to the same spread and hides exactly the
    difference in texture power a blurred output has.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 2, num_layers: int = 3,
                 base_filters: int = 64, norm: str = "batch", detail: float = 0.0):
        super().__init__()
        from monai.networks.nets import PatchDiscriminator

        check_norm(norm)
        if detail < 0:
            raise ValueError(f"detail is a gain (0 = off), got {detail}")
        self.detail = float(detail)
        self.net = PatchDiscriminator(
            spatial_dims=spatial_dims, num_layers_d=num_layers, channels=base_filters,
            in_channels=in_channels, out_channels=1, kernel_size=4,
            norm={"batch": "BATCH", "instance": "INSTANCE", "none": None}[norm],
            bias=norm == "none",
        )
        init_normal_(self)

    def forward(self, x):
        if self.detail:
            x = self.detail * fine_detail(x)
        return logits(self.net(x))


@toolbox.hookimpl
def register_generators(register):
    register("pix2pix_unet", Pix2PixUNet, aliases=("pix2pix",),
             example={"num_downs": 5, "base_filters": 4})


@toolbox.hookimpl
def register_discriminators(register):
    register("patchgan", PatchGAN, example={"base_filters": 4})
