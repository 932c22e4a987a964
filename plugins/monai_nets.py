"""General-purpose networks from MONAI, registered as generators."""

from __future__ import annotations

import torch

import toolbox
from toolbox.nn import pad_to_multiple


class ResidualBasicUNet(torch.nn.Module):
    """MONAI ``BasicUNet`` (full-resolution first stage), optionally predicting the residual.

    No normalisation by default: statistics over training patches differ from those over
    whole images, which hurts denoisers applied to whole images (see DESIGN.md).
    ``bias: false`` makes it bias-free (BF-CNN, Mohan et al. 2020): no additive constant
    anywhere, so with its (positively homogeneous) leaky-ReLU activations the network is
    scale-equivariant and generalises to noise levels outside its training range.
    ``noise_level_map`` (set by the core from ``data.noise_level_map``) adds an input
    channel for the noise level; the residual is added to the image channels only.
    Any input size works: it is padded to a multiple of 16 and cropped back.
    """

    size_multiple = 16  # four 2x down-samplings (toolbox.export pads inputs to it too)

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1,
                 features=(32, 32, 64, 128, 256, 32), act: str = "leakyrelu",
                 norm: str = "none", dropout: float = 0.0, residual: bool = True, bias: bool = True,
                 noise_level_map: bool = False):
        super().__init__()
        from monai.networks.nets import BasicUNet

        if len(features) != 6:
            raise ValueError(f"features needs 6 numbers (5 levels + the last), got {features!r}")
        if residual and in_channels != out_channels:
            raise ValueError("residual needs in_channels == out_channels")
        norms = {"none": None, "instance": ("instance", {"affine": True}), "batch": "batch"}
        if norm not in norms:
            raise ValueError(f"norm must be one of {', '.join(norms)}, got {norm!r}")
        if not bias and norm != "none":
            raise ValueError("bias: false needs norm: none (normalisation layers subtract means "
                             "and add shifts, the constants a bias-free network has none of)")
        acts = {"leakyrelu": ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
                "relu": ("relu", {"inplace": True})}
        if act not in acts:
            raise ValueError(f"act must be one of {', '.join(acts)}, got {act!r}")
        self.net = BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels + int(noise_level_map),
                             out_channels=out_channels, features=tuple(features),
                             act=acts[act], norm=norms[norm], dropout=dropout, bias=bias)
        if not bias:  # BasicUNet keeps biases on its up-convolutions and last convolution
            for module in self.net.modules():
                if isinstance(module, torch.nn.modules.conv._ConvNd) and module.bias is not None:
                    module.register_parameter("bias", None)
        self.residual = residual
        self.image_channels = in_channels

    def forward(self, x):
        padded, crop = pad_to_multiple(x, self.size_multiple)
        out = self.net(padded)
        if self.residual:
            out = out + padded[:, : self.image_channels]
        return out[crop]


@toolbox.hookimpl
def register_generators(register):
    register("unet", ResidualBasicUNet, aliases=("basic_unet",),
             example={"features": (4, 4, 8, 8, 8, 4)})
