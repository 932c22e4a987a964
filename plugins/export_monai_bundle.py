"""MONAI Bundle export (``toolbox export --format monai-bundle -o FOLDER``), for CT and MR
groups that deploy with MONAI (Deploy, Label, the model zoo).

The bundle is a folder that runs without the toolbox:

    configs/metadata.json    what goes in and out (modality, units, value range, channels)
    configs/inference.json   LoadImage -> the toolbox's normalisation and noise estimate ->
                             MONAI's sliding-window (or slice) inferer -> SaveImage
    models/model.ts          the network (TorchScript: any size, pads itself)
    scripts/                 the glue, and the toolbox's own normalisation and noise
                             estimation modules, copied as they are (NumPy, SciPy, scikit-image)
    docs/README.md           the model card, or what is known about the model

Run it from inside the folder (MONAI puts the working directory on the import path, where
``scripts`` is):

    python -m monai.bundle run --config_file configs/inference.json \
        --input_file /data/scan.nii.gz --output_dir /data/denoised

The check runs exactly that, twice: once on a NIfTI file in the image's units, compared with
``toolbox denoise``'s pipeline (same normalisation, noise level, windows), and once through
the generic check (normalised test images, one window each).  MONAI's metadata schema check
downloads its schema, so it is not part of the check; running the bundle is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import toolbox
from toolbox.export import (Exporter, ExportInfo, ExportableNetwork, compare, made_image, package_version,
                            pipeline_sources, reference_denoise, require, scripted_network)

GLUE = '''"""The bundle's glue: the toolbox's denoising path with MONAI's inferers (written by
toolbox export; normalize.py and noise_estimation.py are the toolbox's own modules)."""

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer, SlidingWindowInferer

from .noise_estimation import estimated_sigma
from .normalize import fit_normalizer


class Denoiser:
    """A LoadImage(ensure_channel_first=True) image (C, *spatial) in its units -> the denoised
    image in the same units (and grid, or a finer one for a super-resolution model)."""

    def __init__(self, network, spatial_dims, roi_size, normalize, noise=None, noise_level_map=False,
                 scale=1, overlap=0.25, sigma=None, device="cpu"):
        self.network, self.spatial_dims, self.roi_size = network, int(spatial_dims), list(roi_size)
        self.normalize, self.noise, self.noise_level_map = dict(normalize), noise, bool(noise_level_map)
        self.scale, self.overlap, self.sigma, self.device = int(scale), float(overlap), sigma, device

    def __call__(self, image):
        units = np.asarray(image.detach().cpu().numpy() if torch.is_tensor(image) else image, np.float32)
        normalizer = fit_normalizer(self.normalize, units)
        normalised = torch.from_numpy(normalizer.forward(units).astype(np.float32))[None]
        level = None
        if self.noise_level_map:
            sigma = estimated_sigma(units, self.noise) if self.sigma is None else float(self.sigma)
            level = sigma / normalizer.scale
        network, device = self.network, self.device

        def run(batch):
            noise_sd = None if level is None else torch.full((batch.shape[0],), level, device=batch.device)
            return network(batch, noise_sd)

        dims = units.ndim - 1
        options = dict(roi_size=self.roi_size, sw_batch_size=4, overlap=self.overlap, mode="gaussian",
                       padding_mode="reflect", sw_device=device, device="cpu")
        if dims == self.spatial_dims:
            inferer = SlidingWindowInferer(**options)
        elif dims == 3 and self.spatial_dims == 2:
            inferer = SliceInferer(spatial_dim=2, **options)  # the slices of a NIfTI / DICOM volume
        else:
            raise ValueError(f"a {dims}D image and a {self.spatial_dims}D model")
        with torch.no_grad():
            output = inferer(normalised, run)[0].float().cpu().numpy()
        output = normalizer.denoised(output).astype(np.float32)  # and raised to the recipe's floor
        meta = dict(getattr(image, "meta", {}) or {})
        affine = getattr(image, "affine", None)
        if affine is not None and self.scale != 1:
            affine = finer_affine(np.asarray(affine, np.float64), output.shape[1:], units.shape[1:])
            meta["affine"] = torch.as_tensor(affine)
        return MetaTensor(torch.from_numpy(output), affine=affine, meta=meta)


def finer_affine(affine, out_shape, in_shape):
    """The affine of a grid ``out / in`` times finer over the same extent: each axis's
    spacing divided, the first voxel centre moved back by (1 - 1/k) / 2 old voxels."""
    affine = affine.copy()
    for axis, (out, old) in enumerate(zip(out_shape, in_shape)):
        factor = out / old
        if factor != 1:
            column = affine[:3, axis].copy()
            affine[:3, 3] -= column * (1 - 1 / factor) / 2
            affine[:3, axis] = column / factor
    return affine
'''

MODALITIES = {"window": ("CT", "hounsfield"), "scale": ("MR", "magnitude"), "percentile": ("", "intensity"),
              "minmax": ("", "intensity"), "none": ("", "intensity")}


def inference_config(info: ExportInfo) -> dict:
    return {
        "imports": ["$import torch", "$import numpy", "$import scripts.denoise"],
        "bundle_root": ".",
        "input_file": "",
        "output_dir": "$@bundle_root + '/output'",
        "output_postfix": "denoised",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        # The noise SD in the image's units (HU for CT); null: estimated from each image.
        "sigma": None,
        "roi_size": [int(p) for p in info.patch_size],
        "overlap": info.overlap,
        "normalize": info.normalize,
        "noise": info.noise,
        "network_def": "$torch.jit.load(@bundle_root + '/models/model.ts', map_location=@device).eval()",
        "loader": {"_target_": "LoadImage", "image_only": True, "ensure_channel_first": True},
        "denoiser": {"_target_": "scripts.denoise.Denoiser", "network": "@network_def",
                     "spatial_dims": info.spatial_dims, "roi_size": "@roi_size", "normalize": "@normalize",
                     "noise": "@noise", "noise_level_map": info.noise_level_map, "scale": info.scale,
                     "overlap": "@overlap", "sigma": "@sigma", "device": "@device"},
        "saver": {"_target_": "SaveImage", "output_dir": "@output_dir", "output_postfix": "@output_postfix",
                  "separate_folder": False, "output_dtype": "$numpy.float32", "resample": False,
                  "print_log": False},
        "run": ["$@saver(@denoiser(@loader(@input_file)))"],
    }


def metadata_json(info: ExportInfo) -> dict:
    modality, units = MODALITIES.get(info.normalize.get("type", "percentile"), ("", "intensity"))
    spatial = [int(p) for p in info.patch_size]
    channels = info.channels * info.context_slices
    value_range = ([info.normalize["low"], info.normalize["high"]] if info.normalize.get("type") == "window"
                   else [])
    described = {
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by toolbox {info.toolbox_version} from {Path(info.source).name}"},
        "monai_version": package_version("monai"),
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "optional_packages_version": {"scipy": package_version("scipy"), "scikit-image": package_version("scikit-image"),
                                      "nibabel": package_version("nibabel")},
        "name": f"{info.name} denoiser",
        "task": "image denoising" + (f" and {info.scale}x super-resolution" if info.scale != 1 else ""),
        "description": (f"{info.name}: {info.generator.get('type')} generator, {info.spatial_dims}D, trained with "
                        "toolbox; the input is normalised and its noise level estimated as toolbox denoise does."),
        "authors": "toolbox contributors",
        "copyright": "see docs/README.md",
        "data_type": "nibabel",
        "intended_use": "denoising; see docs/README.md for the training data, noise range and limits",
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": units, "modality": modality, "num_channels": channels,
                "spatial_shape": spatial, "dtype": "float32", "value_range": value_range, "is_patch_data": True,
                "channel_def": {str(c): "image" for c in range(channels)}}},
            "outputs": {"pred": {
                "type": "image", "format": units, "modality": modality, "num_channels": info.channels,
                "spatial_shape": [s * info.scale for s in spatial], "dtype": "float32", "value_range": value_range,
                "is_patch_data": True, "channel_def": {str(c): "denoised image" for c in range(info.channels)}}},
        },
    }
    return described


def readme(info: ExportInfo) -> str:
    if info.card and Path(info.card).is_file():
        body = Path(info.card).read_text(encoding="utf-8")
    else:
        body = (f"# {info.name}\n\nA {info.spatial_dims}D {info.generator.get('type')} denoiser trained with "
                f"toolbox (no model card was found beside {Path(info.source).name}).\n")
    return body.rstrip() + """

## Running this bundle

From inside this folder (MONAI puts it on the import path, where `scripts` is):

    python -m monai.bundle run --config_file configs/inference.json --input_file SCAN.nii.gz --output_dir OUT

`--sigma S` gives the noise SD in the image's units (otherwise it is estimated from each
image); `--roi_size` and `--overlap` set the sliding windows.  The output is SCAN_denoised.nii.gz
in the input's units and grid (MONAI's SaveImage drops trailing axes of length 1: a slice
stored as a one-slice volume comes back as a 2D image).  Needs MONAI, PyTorch, nibabel, SciPy and scikit-image
(`pip install monai[fire,nibabel] scipy scikit-image`).
"""


def _run_bundle(bundle: Path, input_file: Path, output_dir: Path, overrides: dict) -> Path:
    arguments = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                 "--meta_file", "configs/metadata.json", "--input_file", str(input_file),
                 "--output_dir", str(output_dir)]
    for key, value in overrides.items():
        arguments += [f"--{key}", json.dumps(value)]
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(bundle), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(arguments, cwd=bundle, capture_output=True, text=True, env=environment)
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
        raise toolbox.ToolboxError(f"the bundle did not run: {lines[-1] if lines else done.returncode}")
    written = sorted(output_dir.glob("*_denoised.nii*"))
    if not written:
        raise toolbox.ToolboxError("the bundle ran but wrote no *_denoised.nii.gz")
    return written[0]


def _write_nifti(array: np.ndarray, path: Path) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.ascontiguousarray(array, np.float32), np.eye(4)), str(path))


def _read_nifti(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj, np.float32)


class MonaiBundleExporter(Exporter):
    suffix = ""

    @property
    def runtime(self) -> str:
        return f"python -m monai.bundle run (MONAI {package_version('monai')})"

    def write(self, network: ExportableNetwork, example: tuple, path: Path, info: ExportInfo) -> None:
        require("running a MONAI Bundle", "fire")
        if info.context_slices > 1:
            raise toolbox.ToolboxError("2.5D models (data.context_slices) are not exported as MONAI Bundles yet")
        path.mkdir()
        for folder in ("configs", "models", "scripts", "docs"):
            (path / folder).mkdir()
        scripted = scripted_network(network, example, info)
        torch.jit.save(scripted, str(path / "models" / "model.ts"))
        (path / "scripts" / "__init__.py").write_text("", encoding="utf-8")
        for name, source in pipeline_sources().items():
            (path / "scripts" / name).write_text(source, encoding="utf-8")
        (path / "scripts" / "denoise.py").write_text(GLUE, encoding="utf-8")
        (path / "configs" / "inference.json").write_text(json.dumps(inference_config(info), indent=2) + "\n",
                                                         encoding="utf-8")
        (path / "configs" / "metadata.json").write_text(json.dumps(metadata_json(info), indent=2) + "\n",
                                                        encoding="utf-8")
        (path / "docs" / "README.md").write_text(readme(info), encoding="utf-8")
        self._check_against_toolbox(network, path, info)

    def _check_against_toolbox(self, network: ExportableNetwork, bundle: Path, info: ExportInfo) -> None:
        """The bundle on a NIfTI file in image units (a 2D model: a volume of 3 slices),
        against the toolbox's own pipeline on the same values."""
        sizes = [int(p) + 5 for p in info.patch_size] + ([3] if info.spatial_dims == 2 else [])
        normalised = made_image(sizes, info.channels, seed=5)[0].numpy()
        kind = info.normalize.get("type", "percentile")
        if kind == "window":
            low, high = float(info.normalize["low"]), float(info.normalize["high"])
            units = normalised * (high - low) + low
        else:
            units = normalised * 1000.0 + (0.0 if kind == "scale" else 100.0)
        with tempfile.TemporaryDirectory() as folder:
            source = Path(folder) / "check.nii.gz"
            _write_nifti(units[0] if info.channels == 1 else np.moveaxis(units, 0, -1), source)
            written = _read_nifti(_run_bundle(bundle, source, Path(folder) / "out", {}))
        expected = reference_denoise(network, info, units.astype(np.float32), info.noise)
        got = written[None] if info.channels == 1 else np.moveaxis(written, -1, 0)
        result = compare(expected, got)
        if not result["passed"]:
            detail = result.get("reason") or f"max |difference| {result['max_abs_error']:.3g} > {result['tolerance']:.3g}"
            raise toolbox.ToolboxError(f"the bundle's output on a NIfTI file differs from toolbox denoise's ({detail})")

    def load(self, path: Path, info: ExportInfo):
        def run(image: np.ndarray, noise_sd: np.ndarray | None = None) -> np.ndarray:
            # Normalised images through the bundle's own config: no normalisation, the given
            # noise level, and one window the size of the image (as the reference runs it).
            outputs = []
            for index, one in enumerate(np.asarray(image, np.float32)):
                overrides = {"normalize": {"type": "none"}, "roi_size": list(one.shape[1:]), "overlap": 0.0}
                if noise_sd is not None:
                    overrides["sigma"] = float(noise_sd[index])
                with tempfile.TemporaryDirectory() as folder:
                    source = Path(folder) / "image.nii.gz"
                    _write_nifti(one[0] if info.channels == 1 else np.moveaxis(one, 0, -1), source)
                    written = _read_nifti(_run_bundle(path, source, Path(folder) / "out", overrides))
                outputs.append(written[None] if info.channels == 1 else np.moveaxis(written, -1, 0))
            return np.stack(outputs)

        return run


@toolbox.hookimpl
def register_exporters(register):
    def monai_bundle() -> Exporter:
        """MONAI Bundle folder (TorchScript network, the toolbox's normalisation), checked by running it"""
        return MonaiBundleExporter()

    register("monai-bundle", monai_bundle, aliases=("monai_bundle",))
