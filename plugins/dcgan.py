"""DCGAN (Radford et al. 2015), as seed 001 uses it for GAN-prior denoising of electron
micrographs, in 2D and 3D.

- ``dcgan_generator``: a latent vector ``(N, latent_dim)`` -> an image ``(N, C, *image_size)``
  in 0..1: a transposed convolution from 1 to 4 voxels per axis, then transposed
  convolutions that double the size (kernel 4, stride 2) with BatchNorm and ReLU, the last
  one without BatchNorm and with tanh (mapped from -1..1 to 0..1, the toolbox's normalised
  range).  It has no image input: the core's image-to-image generator contract does not
  apply; ``latent_dim`` tells the core and the contract check so.
- ``dcgan_discriminator``: an image of exactly ``image_size`` -> one logit per image;
  strided convolutions (kernel 4, stride 2) with leaky ReLU 0.2, BatchNorm on every layer
  but the input one, no pooling, no sigmoid (the loss takes logits).

Both are initialised N(0, 0.02) (the seed's and DCGAN's choice).  ``image_size`` must be a
power of two of at least 8 (the seed: 512; 64 by default here, for a CPU).
"""

from __future__ import annotations

import math

import torch

import toolbox
from toolbox.nn import init_normal_


def _check_size(image_size: int, part: str) -> int:
    size = int(image_size)
    if size < 8 or 2 ** int(round(math.log2(size))) != size:
        raise ValueError(f"{part}: image_size must be a power of two of at least 8 (8, 16, ..., 512), got "
                         f"{image_size}; crop or pad the training images to one")
    return size


def _layers(spatial_dims: int):
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if spatial_dims == 2:
        return torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.BatchNorm2d
    return torch.nn.Conv3d, torch.nn.ConvTranspose3d, torch.nn.BatchNorm3d


class DCGANGenerator(torch.nn.Module):
    """DCGAN generator: latent vector -> image in 0..1 (``image_size`` per axis)."""

    def __init__(self, spatial_dims: int = 2, out_channels: int = 1, latent_dim: int = 100, image_size: int = 64,
                 base_filters: int = 64, max_filters: int = 512):
        super().__init__()
        size = _check_size(image_size, "dcgan_generator")
        _, transposed, batch_norm = _layers(spatial_dims)
        self.spatial_dims, self.latent_dim, self.image_size = spatial_dims, int(latent_dim), size
        doublings = int(math.log2(size)) - 2  # 4 -> size
        widths = [min(max_filters, base_filters * 2 ** (doublings - 1 - i)) for i in range(doublings)]
        layers = [transposed(self.latent_dim, widths[0], 4, 1, 0, bias=False), batch_norm(widths[0]),
                  torch.nn.ReLU(True)]
        for inner, outer in zip(widths[:-1], widths[1:]):
            layers += [transposed(inner, outer, 4, 2, 1, bias=False), batch_norm(outer), torch.nn.ReLU(True)]
        layers += [transposed(widths[-1], out_channels, 4, 2, 1, bias=False), torch.nn.Tanh()]
        self.net = torch.nn.Sequential(*layers)
        init_normal_(self)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        if latent.ndim != 2 or latent.shape[1] != self.latent_dim:
            raise ValueError(f"dcgan_generator takes latent vectors (N, {self.latent_dim}), got {tuple(latent.shape)}")
        z = latent.reshape(latent.shape[0], self.latent_dim, *([1] * self.spatial_dims))
        return (self.net(z) + 1) / 2


class DCGANDiscriminator(torch.nn.Module):
    """DCGAN discriminator: an image of ``image_size`` per axis (in 0..1) -> a logit (N, 1)."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, image_size: int = 64, base_filters: int = 64,
                 max_filters: int = 512):
        super().__init__()
        size = _check_size(image_size, "dcgan_discriminator")
        conv, _, batch_norm = _layers(spatial_dims)
        self.image_size = size
        halvings = int(math.log2(size)) - 2  # size -> 4
        widths = [min(max_filters, base_filters * 2**i) for i in range(halvings)]
        layers = [conv(in_channels, widths[0], 4, 2, 1, bias=False), torch.nn.LeakyReLU(0.2, True)]
        for inner, outer in zip(widths[:-1], widths[1:]):
            layers += [conv(inner, outer, 4, 2, 1, bias=False), batch_norm(outer), torch.nn.LeakyReLU(0.2, True)]
        layers += [conv(widths[-1], 1, 4, 1, 0, bias=False)]  # 4 -> 1: one logit
        self.net = torch.nn.Sequential(*layers)
        init_normal_(self)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        sizes = tuple(image.shape[2:])
        if any(s != self.image_size for s in sizes):
            raise ValueError(f"dcgan_discriminator was built for images of {self.image_size} per axis, got "
                             f"{list(sizes)}; set its image_size to the patch size")
        return self.net(image * 2 - 1).reshape(image.shape[0], 1)


@toolbox.hookimpl
def register_generators(register):
    register("dcgan_generator", DCGANGenerator, aliases=("dcgan",),
             example={"latent_dim": 8, "image_size": 16, "base_filters": 4})


@toolbox.hookimpl
def register_discriminators(register):
    register("dcgan_discriminator", DCGANDiscriminator, example={"image_size": 32, "base_filters": 4})
