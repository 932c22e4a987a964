"""ONNX export (``toolbox export --format onnx``): one file for any image size.

torch 2.13's ``torch.onnx.export`` uses the dynamo exporter, which needs ``onnx`` and
``onnxscript``; the check runs the file in ``onnxruntime``.  All three come with
``pip install "denoise-toolbox[export]"``.  Every spatial axis and the batch are dynamic
(the padding to the network's size multiple is part of the graph).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import toolbox
from toolbox.export import Exporter, ExportInfo, ExportableNetwork, package_version, require

# A conservative opset: the lowest the dynamo exporter writes, run by every onnxruntime
# since 1.14 and by deepImageJ / OpenVINO / TensorRT releases of the last years.
OPSET = 18


class OnnxExporter(Exporter):
    suffix = ".onnx"

    @property
    def runtime(self) -> str:
        return f"onnxruntime {package_version('onnxruntime')} (opset {OPSET})"

    def write(self, network: ExportableNetwork, example: tuple, path: Path, info: ExportInfo) -> None:
        import torch
        from torch.export import Dim

        require("exporting to ONNX", "onnx", "onnxscript", "onnxruntime")
        image_axes = {0: Dim.DYNAMIC}
        image_axes.update({2 + axis: Dim.DYNAMIC for axis in range(info.spatial_dims)})
        shapes = (image_axes, {0: Dim.DYNAMIC}) if info.noise_level_map else (image_axes,)
        names = ["image", "noise_sd"] if info.noise_level_map else ["image"]
        program = torch.onnx.export(network, example, dynamo=True, dynamic_shapes=shapes, input_names=names,
                                    output_names=["output"], opset_version=OPSET, verbose=False)
        program.save(str(path))
        info.format = f"onnx (opset {OPSET})"

    def load(self, path: Path, info: ExportInfo):
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(image: np.ndarray, noise_sd: np.ndarray | None = None) -> np.ndarray:
            feed = {"image": np.ascontiguousarray(image, dtype=np.float32)}
            if info.noise_level_map:
                feed["noise_sd"] = np.ascontiguousarray(noise_sd, dtype=np.float32)
            return session.run(["output"], feed)[0]

        return run


@toolbox.hookimpl
def register_exporters(register):
    def onnx() -> Exporter:
        """ONNX with dynamic batch and spatial sizes, checked in onnxruntime"""
        return OnnxExporter()

    register("onnx", onnx)
