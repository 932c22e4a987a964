"""ESRGAN-style joint denoising and super-resolution (Wang et al. 2018; seed 002), 2D and 3D.

- ``rrdbnet``: the generator (Residual-in-Residual Dense Blocks), ``scale`` 1, 2 or 4
  (set by the core from ``data.scale``).
- ``vgg_discriminator``: SRGAN's / ESRGAN's discriminator (fixed input size), as seed 002.
- ``unet_sn_discriminator``: Real-ESRGAN's U-Net discriminator with spectral norm (any size).
- noise model ``sr_degradation``: PSF blur, pixel binning by ``scale``, then noise: low- /
  high-resolution pairs from clean high-resolution images.
- scheme ``esrgan``: fidelity-only pre-training, then pixel + perceptual + adversarial with
  the discriminator trained alongside.

The relativistic loss is ``gan`` with ``mode: ragan``; the perceptual and Gram texture
losses are ``vgg_perceptual`` and ``gram_texture`` (``toolbox_plugins.vgg``).
"""

from __future__ import annotations

import toolbox

from .degradation import SRDegradation
from .discriminators import UNetSNDiscriminator, VGGDiscriminator
from .rrdbnet import RRDBNet
from .scheme import ESRGANScheme


@toolbox.hookimpl
def register_generators(register):
    register("rrdbnet", RRDBNet, aliases=("esrgan_generator",), example={"features": 8, "growth": 4, "blocks": 1})


@toolbox.hookimpl
def register_discriminators(register):
    register("vgg_discriminator", VGGDiscriminator, aliases=("srgan_discriminator",),
             example={"input_size": 32, "features": 4, "dense": 8})
    register("unet_sn_discriminator", UNetSNDiscriminator, aliases=("real_esrgan_discriminator",),
             example={"features": 4})


@toolbox.hookimpl
def register_schemes(register):
    register("esrgan", ESRGANScheme, example={"pretrain_steps": 1})


@toolbox.hookimpl
def register_noise_models(register):
    register("sr_degradation", SRDegradation, aliases=("blur_downsample_noise",), example={"scale": 1})
