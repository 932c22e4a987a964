"""A complete third-party plugin: a tiny residual CNN and a total-variation loss."""

import torch
from monai.networks.layers import Conv

import toolbox


class TinyResidualCNN(torch.nn.Module):
    """Three convolutions that predict the noise, subtracted from the input."""

    def __init__(self, spatial_dims, in_channels, out_channels, width: int = 8):
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.body = torch.nn.Sequential(
            conv(in_channels, width, 3, padding=1), torch.nn.ReLU(),
            conv(width, width, 3, padding=1), torch.nn.ReLU(),
            conv(width, out_channels, 3, padding=1),
        )

    def forward(self, x):
        return x - self.body(x)


class TotalVariationLoss(torch.nn.Module):
    """Mean absolute difference between neighbours of the prediction (the target is unused)."""

    def forward(self, prediction, target):
        dims = range(2, prediction.ndim)
        return sum(prediction.diff(dim=d).abs().mean() for d in dims)


@toolbox.hookimpl
def register_generators(register):
    register("demo_cnn", TinyResidualCNN, example={"width": 4})


@toolbox.hookimpl
def register_losses(register):
    register("demo_tv", TotalVariationLoss)
