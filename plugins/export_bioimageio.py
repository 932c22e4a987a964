"""BioImage Model Zoo export (``toolbox export --format bioimageio -o MODEL.zip``), for
microscopists who work in Fiji (deepImageJ), napari, ilastik or QuPath, or with
``bioimageio predict``.

The zip holds ``rdf.yaml`` (model description 0.5), TorchScript and ONNX weights (what Fiji's
engines run) and the state dict (rebuilt by ``bioimageio_network`` below), test
input and output tensors, a cover, the model card as documentation and a conda environment
for the state-dict weights.

What the host runs: the image in its own units; the package's pre-processing normalises it
as closely as the specification allows (a fixed window -> ``scale_linear`` both ways, so a CT
model takes and gives Hounsfield units; per-image levels -> ``scale_range`` on the whole
image's percentiles, before any tiling; the output then stays in those normalised units,
because the specification has no inverse of it); a noise-conditional network measures each
input's noise level itself (``toolbox.export.wavelet_noise_sd``), since hosts cannot give one.

The check: ``bioimageio.core``'s own model test (every weight format against the packaged
test tensors), then the package run through ``bioimageio.core.predict`` on test images of
other sizes against the same processing done here eagerly.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

import toolbox
from toolbox.export import (EstimatedLevelNetwork, Exporter, ExportInfo, ExportableNetwork, FirstOutput, made_image,
                            package_version, require, scripted_network)

OPSET = 18
# bioimageio.core computes percentiles with this (scale_range's default) added to the range.
EPSILON = 1e-6
CITATIONS = {  # generator -> (text, url): the method a package's users should cite
    "rrdbnet": ("Wang et al., ESRGAN: Enhanced super-resolution generative adversarial networks, ECCV "
                "Workshops 2018", "https://arxiv.org/abs/1809.00219"),
    "efficient_unet": ("Rezaei et al., ADL: adversarial distortion learning for medical image denoising, 2022",
                       "https://arxiv.org/abs/2204.14100"),
    "unet": ("Ronneberger et al., U-Net: convolutional networks for biomedical image segmentation, MICCAI 2015",
             "https://arxiv.org/abs/1505.04597"),
    "pix2pix_unet": ("Isola et al., Image-to-image translation with conditional adversarial networks, CVPR 2017",
                     "https://arxiv.org/abs/1611.07004"),
}
W2S = ("Zhou et al., W2S: microscopy data with joint denoising and super-resolution for widefield to SIM "
       "mapping, ECCV Workshops 2020", "https://arxiv.org/abs/2003.05961")


def bioimageio_network(generator: dict, spatial_dims: int, channels: int, multiple: int, scale: int = 1,
                       noise_level_map: bool = False, context_slices: int = 1,
                       rician: bool = False) -> EstimatedLevelNetwork:
    """The network of a package, rebuilt from its ``kwargs`` (the ``pytorch_state_dict``
    weights' architecture, which bioimageio.core calls): the registered generator, untrained."""
    data = {"spatial_dims": spatial_dims, "channels": channels, "context_slices": context_slices,
            "noise_level_map": noise_level_map}
    if scale != 1:
        data["scale"] = scale
    network = toolbox.build_generator({"generator": dict(generator), "data": data}, "bioimageio package")
    return EstimatedLevelNetwork(ExportableNetwork(FirstOutput(network), spatial_dims, multiple, scale,
                                                   noise_level_map), rician).eval()


def _spatial_ids(info: ExportInfo) -> list[str]:
    return ["y", "x"] if info.spatial_dims == 2 else ["z", "y", "x"]


def _range_percentiles(info: ExportInfo) -> tuple[float, float] | None:
    """The percentiles ``scale_range`` maps to 0..1 for per-image normalisations."""
    kind = info.normalize.get("type", "percentile")
    low = info.normalize.get("low") if info.normalize.get("low") is not None else 0.5
    high = info.normalize.get("high") if info.normalize.get("high") is not None else 99.5
    return {"percentile": (float(low), float(high)), "scale": (0.0, float(high)),
            "minmax": (0.0, 100.0)}.get(kind)


def preprocess(image: np.ndarray, info: ExportInfo) -> np.ndarray:
    """The package's pre-processing, as bioimageio.core applies it (per sample and channel)."""
    image = np.asarray(image, np.float64)
    if info.normalize.get("type") == "window":
        low, high = float(info.normalize["low"]), float(info.normalize["high"])
        return ((image - low) / (high - low)).astype(np.float32)
    percentiles = _range_percentiles(info)
    if percentiles is None:
        return image.astype(np.float32)
    axes = tuple(range(2, image.ndim))
    lower = np.percentile(image, percentiles[0], axis=axes, keepdims=True)
    upper = np.percentile(image, percentiles[1], axis=axes, keepdims=True)
    return ((image - lower) / (upper - lower + EPSILON)).astype(np.float32)


def postprocess(output: np.ndarray, info: ExportInfo) -> np.ndarray:
    if info.normalize.get("type") == "window":
        low, high = float(info.normalize["low"]), float(info.normalize["high"])
        return (np.asarray(output, np.float64) * (high - low) + low).astype(np.float32)
    return np.asarray(output, np.float32)


def units_test_image(info: ExportInfo, normalised: np.ndarray) -> np.ndarray:
    """A test image in plausible units: HU for a CT window, else counts from 100 to 1100."""
    if info.normalize.get("type") == "window":
        low, high = float(info.normalize["low"]), float(info.normalize["high"])
        return (normalised * (high - low) + low).astype(np.float32)
    return (normalised * 1000.0 + 100.0).astype(np.float32)


class BioimageioExporter(Exporter):
    suffix = ".zip"

    @property
    def runtime(self) -> str:
        return f"bioimageio.core {package_version('bioimageio.core')} (torchscript, onnx, pytorch_state_dict)"

    def reference(self, network: ExportableNetwork, info: ExportInfo):
        estimated = EstimatedLevelNetwork(network, info.rician).eval()

        def run(image: np.ndarray, noise_sd=None) -> np.ndarray:
            with torch.no_grad():
                output = estimated(torch.from_numpy(preprocess(image, info))).numpy()
            return postprocess(output, info)

        return run

    def write(self, network: ExportableNetwork, example: tuple, path: Path, info: ExportInfo) -> None:
        require("a BioImage Model Zoo package", "bioimageio.core", "bioimageio.spec", "onnx", "onnxscript",
                "onnxruntime")
        if info.context_slices > 1:
            raise toolbox.ToolboxError("2.5D models (data.context_slices) are not exported to the BioImage Model "
                                       "Zoo yet")
        with tempfile.TemporaryDirectory() as folder:
            work = Path(folder)
            description = self._describe(network, example, info, work)
            from bioimageio.spec import save_bioimageio_package

            save_bioimageio_package(description, output_path=path)
        self._test(path)

    def _describe(self, network: ExportableNetwork, example: tuple, info: ExportInfo, work: Path):
        from bioimageio.spec.model import v0_5 as spec

        estimated = EstimatedLevelNetwork(network, info.rician).eval()
        (work / "environment.yaml").write_text(
            "name: toolbox\nchannels: [conda-forge]\ndependencies:\n  - python>=3.10\n  - pip\n"
            f"  - pip:\n      - denoise-toolbox=={info.toolbox_version}\n", encoding="utf-8")
        files = self._weights(network, estimated, example, info, work)
        test_input = units_test_image(info, made_image(info.patch_size, info.channels, seed=11).numpy())
        test_output = self.reference(network, info)(test_input)
        np.save(work / "test_input.npy", test_input)
        np.save(work / "test_output.npy", test_output)
        _cover(test_input, test_output, work / "cover.png")
        (work / "README.md").write_text(_documentation(info), encoding="utf-8")

        spatial = _spatial_ids(info)
        # Any size from 16 on: the network pads each input to its multiple itself.
        smallest = 16
        channels = [f"channel{c}" for c in range(info.channels)]
        preprocessing = [spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32"))]
        postprocessing = []
        if info.normalize.get("type") == "window" and (info.normalize["low"], info.normalize["high"]) != (0, 1):
            low, high = float(info.normalize["low"]), float(info.normalize["high"])
            preprocessing.append(spec.ScaleLinearDescr(kwargs=spec.ScaleLinearKwargs(gain=1 / (high - low),
                                                                                     offset=-low / (high - low))))
            postprocessing.append(spec.ScaleLinearDescr(kwargs=spec.ScaleLinearKwargs(gain=high - low, offset=low)))
        elif _range_percentiles(info) is not None:
            low, high = _range_percentiles(info)
            preprocessing.append(spec.ScaleRangeDescr(kwargs=spec.ScaleRangeKwargs(
                axes=[spec.AxisId(a) for a in spatial], min_percentile=low, max_percentile=high, eps=EPSILON)))
        postprocessing.append(spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32")))
        inputs = [spec.InputTensorDescr(
            id=spec.TensorId("input"),
            description=f"the image in its own units ({_units(info)})",
            axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier(c) for c in channels])]
            + [spec.SpaceInputAxis(id=spec.AxisId(a), size=spec.ParameterizedSize(min=smallest, step=1))
               for a in spatial],
            test_tensor=spec.FileDescr(source=work / "test_input.npy"),
            preprocessing=preprocessing)]
        outputs = [spec.OutputTensorDescr(
            id=spec.TensorId("output"),
            description=("denoised" + (f" and {info.scale}x finer along each spatial axis" if info.scale != 1 else "")
                         + (f", in {_units(info)}" if info.normalize.get("type") == "window"
                            else ", normalised as the input was (0 and 1 = its low and high percentiles)")),
            axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier(c) for c in channels])]
            + [spec.SpaceOutputAxis(id=spec.AxisId(a), scale=1.0 / info.scale,
                                    size=spec.SizeReference(tensor_id=spec.TensorId("input"), axis_id=spec.AxisId(a)))
               for a in spatial],
            test_tensor=spec.FileDescr(source=work / "test_output.npy"),
            postprocessing=postprocessing)]
        text, url = CITATIONS.get(info.generator.get("type"), CITATIONS["unet"])
        cite = [spec.CiteEntry(text=text, url=url)]
        if info.scale != 1:
            cite.append(spec.CiteEntry(text=W2S[0], url=W2S[1]))
        return spec.ModelDescr(
            name=_name(info),
            description=(f"{info.spatial_dims}D {info.generator.get('type')} denoiser"
                         + (f" with {info.scale}x super-resolution" if info.scale != 1 else "")
                         + " trained with toolbox (adversarial denoising toolbox)"),
            authors=[spec.Author(name="toolbox contributors")],
            cite=cite,
            license=spec.LicenseId("Apache-2.0"),
            documentation=spec.FileDescr(source=work / "README.md"),
            covers=[spec.FileDescr(source=work / "cover.png")],
            tags=["denoising", f"{info.spatial_dims}d", "pytorch"] + (["super-resolution"] if info.scale != 1 else []),
            inputs=inputs,
            outputs=outputs,
            weights=spec.WeightsDescr(**files),
        )

    def _weights(self, network: ExportableNetwork, estimated: EstimatedLevelNetwork, example: tuple,
                 info: ExportInfo, work: Path) -> dict:
        from bioimageio.spec.model import v0_5 as spec
        from torch.export import Dim

        torch_version = spec.Version(torch.__version__.split("+")[0])
        image = example[0]
        scripted = scripted_network(network, example, info, estimate_level=True)
        torch.jit.save(scripted, str(work / "weights_torchscript.pt"))
        torch.save(estimated.state_dict(), work / "weights_state_dict.pt")
        axes = {0: Dim.DYNAMIC, **{2 + axis: Dim.DYNAMIC for axis in range(info.spatial_dims)}}
        program = torch.onnx.export(estimated, (image,), dynamo=True, dynamic_shapes=(axes,), input_names=["input"],
                                    output_names=["output"], opset_version=OPSET, verbose=False)
        program.save(str(work / "weights.onnx"))
        kwargs = {"generator": info.generator, "spatial_dims": info.spatial_dims, "channels": info.channels,
                  "multiple": info.multiple, "scale": info.scale, "noise_level_map": info.noise_level_map,
                  "rician": info.rician}
        return {
            "pytorch_state_dict": spec.PytorchStateDictWeightsDescr(
                source=work / "weights_state_dict.pt", pytorch_version=torch_version,
                architecture=spec.ArchitectureFromLibraryDescr(callable=spec.Identifier("bioimageio_network"),
                                                               import_from="toolbox_plugins.export_bioimageio",
                                                               kwargs=kwargs),
                dependencies=spec.FileDescr(source=work / "environment.yaml")),
            "torchscript": spec.TorchscriptWeightsDescr(source=work / "weights_torchscript.pt",
                                                        pytorch_version=torch_version, parent="pytorch_state_dict"),
            "onnx": spec.OnnxWeightsDescr(source=work / "weights.onnx", opset_version=OPSET,
                                          parent="pytorch_state_dict"),
        }

    def _test(self, path: Path) -> None:
        """bioimageio.core's model test: every weight format reproduces the test tensors."""
        from bioimageio.core import test_model

        summary = test_model(path)
        if summary.status != "passed":
            failed = [d for d in summary.details if d.status == "failed"]
            first = failed[0] if failed else None
            reason = (f"{first.name}: {(first.errors[0].msg if first.errors else '')}" if first is not None
                      else summary.status)
            raise toolbox.ToolboxError(f"bioimageio.core's test of the package failed ({reason[:300]})")

    def load(self, path: Path, info: ExportInfo):
        from bioimageio.core import load_model_description, predict

        description = load_model_description(path)

        def run(image: np.ndarray, noise_sd=None) -> np.ndarray:
            sample = predict(model=description, inputs={"input": np.asarray(image, np.float32)})
            member = sample.members[next(iter(sample.members))]
            return np.asarray(member.data, np.float32)

        return run


def _units(info: ExportInfo) -> str:
    return "Hounsfield units" if info.normalize.get("type") == "window" else "counts or any linear unit"


def _name(info: ExportInfo) -> str:
    return f"toolbox {info.name} denoiser".replace("_", " ")


def _documentation(info: ExportInfo) -> str:
    if info.card and Path(info.card).is_file():
        body = Path(info.card).read_text(encoding="utf-8").rstrip()
    else:
        body = f"# {info.name}\n\nA {info.spatial_dims}D {info.generator.get('type')} denoiser trained with toolbox."
    return body + """

## In this package

The input is the image in its own units.  Pre-processing normalises it (a fixed window for
CT, kept exact by a linear map both ways; otherwise the image's low and high percentiles),
and a noise-conditional network measures each input's noise level itself (the median
absolute finest Daubechies-2 diagonal detail, as `toolbox denoise` measures it for
Gaussian noise), so no extra input is needed.  For a model trained on photon noise
`toolbox denoise` gives instead the RMS of the signal-dependent noise it fits, 18-20 %
higher; this package does not, and denoises such images a little less.  Weights:
TorchScript and ONNX (for deepImageJ and other hosts), and
the state dict (rebuilt by `toolbox_plugins.export_bioimageio.bioimageio_network` with the
`denoise-toolbox` package).  Exported and checked with `toolbox export --format bioimageio`.
"""


def _cover(test_input: np.ndarray, test_output: np.ndarray, path: Path) -> None:
    """Input | output, side by side (the middle slice of a volume), 8-bit."""
    from PIL import Image

    def plane(array):
        array = np.asarray(array, np.float64)[0, 0]
        while array.ndim > 2:
            array = array[array.shape[0] // 2]
        return array

    left, right = plane(test_input), plane(test_output)
    if right.shape != left.shape:  # super-resolution: the input shown at the output's size
        left = np.kron(left, np.ones((right.shape[0] // left.shape[0], right.shape[1] // left.shape[1])))
    low, high = np.percentile(left, [0.5, 99.5])
    scaled = [np.clip((p - low) / max(high - low, 1e-12), 0, 1) for p in (left, right)]
    pixels = (np.concatenate([scaled[0], np.ones((left.shape[0], 4)), scaled[1]], axis=1) * 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if image.width < 256:  # covers are shown at a few hundred pixels
        factor = -(-256 // image.width)
        image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    image.save(path)


@toolbox.hookimpl
def register_exporters(register):
    def bioimageio() -> Exporter:
        """BioImage Model Zoo zip (TorchScript, ONNX, state dict), checked by bioimageio.core"""
        return BioimageioExporter()

    register("bioimageio", bioimageio, aliases=("bmz",))
