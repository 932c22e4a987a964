"""ADL: Adversarial Distortion Learning (Ghahremani et al. 2022, seed 003), 2D and 3D.

- ``efficient_unet``: the denoiser.  Residual blocks (conv-norm-ReLU-conv-norm plus a 1x1
  shortcut), an encoder of 96/128/160 filters and a 192-filter bridge (stride 8 in all), a
  transposed-conv decoder with skips, the *content enhancer* (parallel dilated 7-wide
  convolutions on the noisy input, fed to the last decoder stage), and three *transformer*
  heads (residual blocks, 1x1 conv, sigmoid) giving the image at full, 1/2 and 1/4 scale.
- ``efficient_unet_discriminator``: the same shape with 48/64/80/96 filters, returning
  logit maps at the bridge and at the three scales.
- Losses ``pyramid_texture`` (a-trous B3-spline detail bands), ``histogram`` (a soft,
  differentiable histogram compared with log-cosh) and ``adl`` (L1 + pyramid + histogram).
- Scheme ``adl``: denoiser warm-up, discriminator warm-up, then adversarial training with
  deep supervision at every scale of the denoiser.

The package holds ``networks``, ``losses`` and ``scheme``; this module registers them.

``release_compat`` switches reproduce the public (TensorFlow, 2D) release instead of the
paper: hard histogram (no gradient), only the coarsest pyramid band (the release's loop
keeps only its last band), a discriminator shown clean vs *noisy* images, and no
adversarial term in the denoiser's loss.  Everything else follows the paper.
"""

from __future__ import annotations

import toolbox

from .losses import ADLLoss, HistogramLoss, PyramidTextureLoss
from .networks import EfficientUNet, EfficientUNetDiscriminator
from .scheme import ADLScheme


@toolbox.hookimpl
def register_generators(register):
    register("efficient_unet", EfficientUNet, aliases=("adl_denoiser",),
             example={"filters": (4, 6, 8), "bridge": 8, "enhancer_kernel": 3})


@toolbox.hookimpl
def register_discriminators(register):
    register("efficient_unet_discriminator", EfficientUNetDiscriminator, aliases=("adl_discriminator",),
             example={"filters": (4, 4, 8), "bridge": 8})


@toolbox.hookimpl
def register_losses(register):
    register("pyramid_texture", PyramidTextureLoss, aliases=("pyramid",))
    register("histogram", HistogramLoss)
    register("adl", ADLLoss)


@toolbox.hookimpl
def register_schemes(register):
    register("adl", ADLScheme)
