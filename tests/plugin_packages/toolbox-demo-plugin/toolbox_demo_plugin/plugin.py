"""A complete third-party plugin: a tiny residual CNN, a total-variation loss and a
made-up image format (``.toy``) that ``toolbox denoise`` reads and writes."""

from pathlib import Path

import numpy as np
import torch
from monai.networks.layers import Conv

import toolbox
import toolbox.io


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


class ToyFormat(toolbox.io.ImageFormat):
    """A made-up format for the tests: a text line "TOYIMG rows cols", then uint16 pixels."""

    suffixes = (".toy",)

    def sniff(self, path):
        return toolbox.io.file_starts_with(path, b"TOYIMG ")

    def read(self, path, series=None, channels=None):
        raw = Path(path).read_bytes()
        header, _, body = raw.partition(b"\n")
        try:
            _, rows, cols = header.decode("ascii").split()
            pixels = np.frombuffer(body, dtype="<u2").reshape(int(rows), int(cols))
        except ValueError as error:
            raise toolbox.ToolboxError(f"{path}: not a readable toy image ({error})") from error
        array = pixels.astype(np.float32)[None]
        toolbox.io.check_finite(array, Path(path))
        return toolbox.io.Volume(array=array, path=Path(path), format=self.name, stored_dtype=np.dtype("<u2"),
                                 value_range=toolbox.io.dtype_range(np.dtype("<u2")), name=Path(path).name)

    def write(self, volume, units, output, description, overwrite):
        stored = toolbox.io.to_stored(volume, units)[0]

        def write(path):
            Path(path).write_bytes(f"TOYIMG {stored.shape[0]} {stored.shape[1]}\n".encode("ascii")
                                   + stored.astype("<u2").tobytes())

        toolbox.io.write_file(output, overwrite, write)


@toolbox.hookimpl
def register_formats(register):
    register("toy", ToyFormat)
