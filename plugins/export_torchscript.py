"""TorchScript export (``toolbox export --format torchscript``): what Fiji's deepImageJ and
other Java/C++ hosts of libtorch run.

The generator is traced (most networks are not scriptable as written) at a multiple of the
size where its trace is checked to generalise (``toolbox.export.size_multiple``), and the
wrapper that pads every input to that multiple is scripted around it, so the padding
follows the input size at run time.  torch marks TorchScript as deprecated in favour of ``torch.export``; it
is kept because those hosts still run it.  The check loads the file with ``torch.jit.load``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import toolbox
from toolbox.export import Exporter, ExportInfo, ExportableNetwork, scripted_network


class TorchScriptExporter(Exporter):
    suffix = ".pt"

    @property
    def runtime(self) -> str:
        return f"torch.jit.load (torch {torch.__version__})"

    def write(self, network: ExportableNetwork, example: tuple, path: Path, info: ExportInfo) -> None:
        torch.jit.save(scripted_network(network, example, info), str(path))

    def load(self, path: Path, info: ExportInfo):
        module = torch.jit.load(str(path), map_location="cpu").eval()

        def run(image: np.ndarray, noise_sd: np.ndarray | None = None) -> np.ndarray:
            with torch.no_grad():
                level = None if noise_sd is None else torch.from_numpy(np.asarray(noise_sd, np.float32))
                return module(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), level).numpy()

        return run


@toolbox.hookimpl
def register_exporters(register):
    def torchscript() -> Exporter:
        """TorchScript (traced network, scripted padding), checked with torch.jit.load"""
        return TorchScriptExporter()

    register("torchscript", torchscript)
