"""The two discriminators of the ESRGAN family, in 2D and 3D.

- ``vgg_discriminator``: SRGAN's / ESRGAN's (seed 002's): pairs of a 3-wide convolution and
  a strided 4-wide one over five stages (features x1, x2, x4, x8, x8), then two dense
  layers to one score per image.  The dense layers fix the input size (``input_size``).
- ``unet_sn_discriminator``: Real-ESRGAN's U-Net with spectral normalisation, one logit
  per pixel, any input size: it judges where the texture is wrong, not only whether.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from toolbox.nn import norm_layer, pad_to_multiple


def _conv(spatial_dims: int):
    return torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d


class VGGDiscriminator(torch.nn.Module):
    """``(N, C, *[input_size] * dims) -> (N, 1)`` logits; any other size is a ``ValueError``
    that says which size it takes (the recipe check catches it before training).

    ``features`` 64 in ESRGAN (32 in 3D by default would already be heavy); ``norm`` batch
    as in ESRGAN.  ``input_size`` must be a multiple of 32 (five stride-2 stages).
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, input_size: int = 128, features: int = 64,
                 norm: str = "batch", dense: int = 100):
        super().__init__()
        if input_size < 32 or input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32 (five stride-2 stages), got {input_size}")
        conv = _conv(spatial_dims)
        self.spatial_dims, self.input_size = spatial_dims, input_size
        widths = [features, features * 2, features * 4, features * 8, features * 8]
        layers, channels = [], in_channels
        for stage, width in enumerate(widths):
            # The first convolution of the network has no normalisation (as in ESRGAN).
            layers += [conv(channels, width, 3, 1, 1, bias=stage == 0)]
            if stage:
                layers += [norm_layer(norm, spatial_dims, width)]
            layers += [torch.nn.LeakyReLU(0.2), conv(width, width, 4, 2, 1, bias=False),
                       norm_layer(norm, spatial_dims, width), torch.nn.LeakyReLU(0.2)]
            channels = width
        self.features = torch.nn.Sequential(*layers)
        cells = (input_size // 32) ** spatial_dims
        self.classifier = torch.nn.Sequential(torch.nn.Linear(channels * cells, dense), torch.nn.LeakyReLU(0.2),
                                              torch.nn.Linear(dense, 1))

    def forward(self, x):
        size = tuple(x.shape[2:])
        if size != (self.input_size,) * self.spatial_dims:
            wanted = "x".join([str(self.input_size)] * self.spatial_dims)
            raise ValueError(f"vgg_discriminator takes {wanted} images (input_size), got {'x'.join(map(str, size))}: "
                             "set input_size to the output patch size (data.patch_size x data.scale) or use "
                             "unet_sn_discriminator, which takes any size")
        return self.classifier(self.features(x).flatten(1))


class UNetSNDiscriminator(torch.nn.Module):
    """``(N, C, *size) -> (N, 1, *size)`` logits (Real-ESRGAN's ``UNetDiscriminatorSN``).

    Three strided, spectrally normalised convolutions down (features x2, x4, x8), three
    up (bilinear / trilinear 2x, then a convolution) with skip additions, two more
    convolutions and a 1-channel head.  Sizes that are not multiples of 8 are padded by
    reflection and the logits cropped back.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, features: int = 64, skip: bool = True):
        super().__init__()
        conv = _conv(spatial_dims)
        sn = torch.nn.utils.parametrizations.spectral_norm
        f = features
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"
        self.skip = skip
        self.conv0 = conv(in_channels, f, 3, 1, 1)
        self.down = torch.nn.ModuleList([sn(conv(f, 2 * f, 4, 2, 1, bias=False)),
                                         sn(conv(2 * f, 4 * f, 4, 2, 1, bias=False)),
                                         sn(conv(4 * f, 8 * f, 4, 2, 1, bias=False))])
        self.up = torch.nn.ModuleList([sn(conv(8 * f, 4 * f, 3, 1, 1, bias=False)),
                                       sn(conv(4 * f, 2 * f, 3, 1, 1, bias=False)),
                                       sn(conv(2 * f, f, 3, 1, 1, bias=False))])
        self.extra = torch.nn.ModuleList([sn(conv(f, f, 3, 1, 1, bias=False)), sn(conv(f, f, 3, 1, 1, bias=False))])
        self.head = conv(f, 1, 3, 1, 1)

    def forward(self, x):
        x, crop = pad_to_multiple(x, 8)
        skips = [F.leaky_relu(self.conv0(x), 0.2)]
        for conv in self.down:
            skips.append(F.leaky_relu(conv(skips[-1]), 0.2))
        y = skips.pop()
        for conv in self.up:
            y = F.leaky_relu(conv(F.interpolate(y, scale_factor=2, mode=self.mode, align_corners=False)), 0.2)
            skip = skips.pop()
            y = y + skip if self.skip else y
        for conv in self.extra:
            y = F.leaky_relu(conv(y), 0.2)
        return self.head(y)[crop]
