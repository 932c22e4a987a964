"""`toolbox export`: ONNX and TorchScript files that run at any size and reproduce the
toolbox's own output, checked by the command itself; clear refusals otherwise."""

from __future__ import annotations

import json
import types

import nibabel as nib
import numpy as np
import pytest
import torch

import toolbox
from conftest import SAMPLES
from toolbox.checkpoint import FORMAT, save_checkpoint
from toolbox.cli import main
from toolbox.export_model import export_model
from toolbox.parts import build_generator

onnxruntime = pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxscript, onnxruntime) "
                                  'is not installed: pip install "denoise-toolbox[export]"')


def _checkpoint(path, generator: dict, dims: int, noise_level_map=False, scale=1, normalize=None):
    """An untrained generator saved as a toolbox checkpoint (what export reads)."""
    data = {"spatial_dims": dims, "channels": 1, "patch_size": [32] * dims if dims == 2 else [16] * 3,
            "normalize": normalize or {"type": "window", "low": 0, "high": 1}, "noise_level_map": noise_level_map}
    if scale != 1:
        data["scale"] = scale
    recipe = {"name": path.stem, "generator": generator, "data": data, "train": {}}
    torch.manual_seed(0)
    network = build_generator(toolbox.plugin_registry(), recipe, str(path))
    save_checkpoint(path, {"format": FORMAT, "recipe": recipe, "step": 0, "generator_module": "generator",
                           "scheme": {"modules": {"generator": network.state_dict()}}})
    return path


def _example(name):
    return {"type": name, **toolbox.components("generators")[name].example}


CASES = [  # (generator, dims, noise-level input, scale)
    ("unet", 2, True, 1), ("unet", 3, False, 1), ("efficient_unet", 2, False, 1), ("efficient_unet", 3, True, 1),
    ("pix2pix_unet", 2, False, 1), ("resunet", 3, False, 1), ("wgan_cnn", 2, False, 1),
    ("rrdbnet", 2, True, 2), ("rrdbnet", 3, False, 2),
]


@pytest.mark.parametrize("name,dims,level,scale", CASES, ids=[f"{c[0]}-{c[1]}d" for c in CASES])
def test_torchscript_export_of_every_kind_of_generator_reproduces_it(tmp_path, name, dims, level, scale):
    model = _checkpoint(tmp_path / "m.pt", _example(name), dims, level, scale)
    info = export_model(toolbox.plugin_registry(), model, "torchscript", tmp_path / "out.pt")
    check = info.verification
    assert check["passed"] and check["max_abs_error"] <= check["tolerance"]
    # The file runs alone, at a size that is neither the trace's nor a multiple of anything.
    module = torch.jit.load(str(tmp_path / "out.pt"))
    image = torch.rand((2, 1) + (21, 26, 19)[:dims])
    level_input = torch.tensor([0.05, 0.1]) if level else None
    out = module(image, level_input)
    assert tuple(out.shape) == (2, 1) + tuple(s * scale for s in (21, 26, 19)[:dims])


ONNX_CASES = [("unet", 2, True, 1), ("efficient_unet", 3, False, 1), ("rrdbnet", 2, False, 2)]


@pytest.mark.parametrize("name,dims,level,scale", ONNX_CASES, ids=[f"{c[0]}-{c[1]}d" for c in ONNX_CASES])
def test_onnx_export_runs_at_sizes_it_was_not_exported_with(tmp_path, name, dims, level, scale):
    model = _checkpoint(tmp_path / "m.pt", _example(name), dims, level, scale)
    export_model(toolbox.plugin_registry(), model, "onnx", tmp_path / "out.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"])
    network = build_generator(toolbox.plugin_registry(), torch.load(model, weights_only=True)["recipe"], "t")
    network.load_state_dict(torch.load(model, weights_only=True)["scheme"]["modules"]["generator"])
    network.eval()
    for shape in [(3, 1, 23, 40, 18)[: 2 + dims], (1, 1, 50, 33, 27)[: 2 + dims]]:
        image = np.random.default_rng(0).random(shape, dtype=np.float32)
        feed = {"image": image}
        if level:
            feed["noise_sd"] = np.full(shape[0], 0.07, np.float32)
        got = session.run(["output"], feed)[0]
        with torch.no_grad():
            tensor = torch.from_numpy(image)
            if level:
                tensor = torch.cat([tensor, torch.full_like(tensor[:, :1], 0.07)], dim=1)
            expected = network(tensor)
            expected = (expected[0] if isinstance(expected, tuple) else expected).numpy()
        assert got.shape == expected.shape == shape[:2] + tuple(s * scale for s in shape[2:])
        assert np.abs(got - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())


def test_the_shipped_ct_model_in_onnx_denoises_a_real_slice_as_the_toolbox_does(tmp_path):
    """What docs/export.md tells an ONNX user to do (window normalisation, the noise SD in
    normalised units) gives the toolbox's own result on a real CT slice."""
    from toolbox.infer import denoise_units
    from toolbox.pretrained import model_file
    from toolbox.infer import load_trained_model

    registry = toolbox.plugin_registry()
    assert main(["export", "--model", "ct", "--format", "onnx", "-o", str(tmp_path / "ct.onnx")]) == 0
    described = json.loads((tmp_path / "ct.onnx.json").read_text())
    assert described["verification"]["passed"] and described["noise_level_map"]
    assert [i["name"] for i in described["inputs"]] == ["image", "noise_sd"]
    low, high = described["normalize"]["low"], described["normalize"]["high"]

    hu = np.asarray(nib.load(str(SAMPLES / "ct" / "test" / "chest_small.nii.gz")).dataobj, np.float32)[..., 0]
    noisy = hu + np.random.default_rng(1).normal(0, 50, hu.shape).astype(np.float32)
    session = onnxruntime.InferenceSession(str(tmp_path / "ct.onnx"), providers=["CPUExecutionProvider"])
    normalised = ((noisy - low) / (high - low))[None, None].astype(np.float32)
    out = session.run(["output"], {"image": normalised, "noise_sd": np.array([50 / (high - low)], np.float32)})[0]
    denoised = out[0, 0] * (high - low) + low

    model = load_trained_model(model_file(registry, "ct"), torch.device("cpu"), registry)
    # One window over the whole 128x128 slice, as the ONNX file sees it.
    own = denoise_units(model.generator, 2, [128, 128], model.recipe["data"]["normalize"], noisy[None], None,
                        torch.device("cpu"), noise_level_map=True, sigma=50.0)[0]
    assert np.abs(denoised - own).max() < 0.05  # HU
    assert np.sqrt(np.mean((denoised - hu) ** 2)) < 0.5 * np.sqrt(np.mean((noisy - hu) ** 2))


def test_export_refuses_with_one_line_and_writes_nothing(tmp_path, capsys):
    model = _checkpoint(tmp_path / "m.pt", _example("unet"), 2)
    (tmp_path / "old.onnx").write_bytes(b"kept")
    cases = [
        (["--format", "onxx", "-o", str(tmp_path / "a.onnx")], "did you mean"),
        (["--format", "onnx", "-o", str(tmp_path / "a.pt")], "ending in .onnx"),
        (["--format", "onnx", "-o", str(tmp_path / "old.onnx")], "already exists"),
        (["--format", "torchscript", "-o", str(model), "--overwrite"], "the model being exported"),
    ]
    for options, message in cases:
        assert main(["export", str(model), *options]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err.lower() and len(err.splitlines()) == 1 and "Traceback" not in err
    assert main(["export", str(tmp_path / "missing"), "--format", "onnx", "-o", str(tmp_path / "b.onnx")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "old.onnx"]
    assert (tmp_path / "old.onnx").read_bytes() == b"kept"


class DataDependent(torch.nn.Module):
    """A generator whose path depends on its input's values: no graph can hold it."""

    def __init__(self, spatial_dims=2, in_channels=1, out_channels=1):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y * 2 if float(x.mean()) > 0.5 else y - 1


def test_a_generator_that_cannot_be_exported_is_named_in_one_line(tmp_path, capsys, plugin_for_one_test):
    plugin = types.SimpleNamespace()

    @toolbox.hookimpl
    def register_generators(register):
        register("data_dependent", DataDependent)

    plugin.register_generators = register_generators
    plugin_for_one_test(plugin)
    model = _checkpoint(tmp_path / "m.pt", {"type": "data_dependent"}, 2)
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".pt")):
        assert main(["export", str(model), "--format", fmt, "-o", str(tmp_path / f"x{suffix}")]) == 2
        err = capsys.readouterr().err.strip()
        assert "generator 'data_dependent'" in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_exporters_are_listed_and_a_third_party_format_plugs_in(tmp_path, capsys, plugin_for_one_test):
    """A format from another package: written, loaded back and checked like the built-ins."""
    from toolbox.export import Exporter

    class StateDict(Exporter):
        suffix = ".sd"
        runtime = "torch.load"

        def write(self, network, example, path, info):
            torch.save(network.state_dict(), path)

        def load(self, path, info):
            weights = torch.load(path, weights_only=True)

            def run(image, noise_sd=None):
                copy = _rebuilt(info, weights)
                with torch.no_grad():
                    return copy(torch.from_numpy(image), None).numpy()

            return run

    def _rebuilt(info, weights):
        from toolbox.export import ExportableNetwork, FirstOutput

        generator = toolbox.build("generators", info.generator, spatial_dims=info.spatial_dims, in_channels=1,
                                  out_channels=1)
        network = ExportableNetwork(FirstOutput(generator), info.spatial_dims, info.multiple).eval()
        network.load_state_dict(weights)
        return network

    plugin = types.SimpleNamespace()

    @toolbox.hookimpl
    def register_exporters(register):
        register("state_dict", lambda: StateDict())

    plugin.register_exporters = register_exporters
    plugin_for_one_test(plugin)
    assert main(["list", "exporters"]) == 0
    listed = capsys.readouterr().out
    assert "onnx" in listed and "torchscript" in listed and "state_dict" in listed
    model = _checkpoint(tmp_path / "m.pt", _example("unet"), 2)
    assert main(["export", str(model), "--format", "state_dict", "-o", str(tmp_path / "m.sd")]) == 0
    assert "max |difference| 0" in capsys.readouterr().out


def _run_bundle(bundle, nifti, out):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                           "--input_file", str(nifti), "--output_dir", str(out)], cwd=bundle, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (written,) = out.glob("*_denoised.nii.gz")
    return nib.load(str(written))


@pytest.mark.parametrize("case", ["ct-2d-on-a-slice", "mr-3d-rician"])
def test_a_monai_bundle_runs_on_nifti_as_toolbox_denoise_does(tmp_path, case):
    """What the issue asks of a CT/MR user's bundle: `python -m monai.bundle run` on a NIfTI
    file gives `toolbox denoise`'s output, in the same units and geometry."""
    pytest.importorskip("fire", reason="python -m monai.bundle needs fire (the export extra)")
    rng = np.random.default_rng(3)
    if case == "ct-2d-on-a-slice":
        model_args = ["--model", "ct"]
        source = nib.load(str(SAMPLES / "ct" / "test" / "chest_small.nii.gz"))
        values = np.asarray(source.dataobj, np.float32) + rng.normal(0, 30, source.shape).astype(np.float32)
    else:
        model = _checkpoint(tmp_path / "mr.pt", {"type": "unet", "features": [4, 4, 4, 4, 4, 4]}, 3, True,
                            normalize={"type": "scale", "floor": 0})  # magnitude MR: nothing below 0
        recipe = torch.load(model, weights_only=True)
        recipe["recipe"]["data"]["noise"] = {"type": "rician", "sigma": [0.01, 0.1]}
        torch.save(recipe, model)
        model_args = [str(model)]
        source = nib.load(str(SAMPLES / "mr3d" / "test" / "mni_t1_2mm_z52-80.nii.gz"))
        clean = np.asarray(source.dataobj, np.float32)
        values = np.hypot(clean + rng.normal(0, 8, clean.shape), rng.normal(0, 8, clean.shape)).astype(np.float32)
    noisy = tmp_path / "noisy.nii.gz"
    nib.save(nib.Nifti1Image(values, source.affine), str(noisy))
    assert main(["export", *model_args, "--format", "monai-bundle", "-o", str(tmp_path / "bundle")]) == 0
    bundle = tmp_path / "bundle"
    assert (bundle / "models" / "model.ts").is_file() and (bundle / "docs" / "README.md").is_file()
    described = json.loads((bundle / "configs" / "metadata.json").read_text())
    image_format = described["network_data_format"]["inputs"]["image"]
    assert image_format["modality"] == ("CT" if case.startswith("ct") else "MR")
    if case.startswith("ct"):
        assert image_format["format"] == "hounsfield" and image_format["value_range"] == [-1000, 1000]
        assert "Training data" in (bundle / "docs" / "README.md").read_text()  # the model card

    from_bundle = _run_bundle(bundle, noisy, tmp_path / "bundle_out")
    assert main(["denoise", *model_args, str(noisy), "-o", str(tmp_path / "toolbox.nii.gz")]) == 0
    from_toolbox = nib.load(str(tmp_path / "toolbox.nii.gz"))
    a, b = np.asarray(from_bundle.dataobj, np.float32), np.asarray(from_toolbox.dataobj, np.float32)
    assert b.shape == values.shape
    assert a.shape == values.shape or a.shape == values.shape[:2]  # SaveImage drops a last axis of 1
    a = a.reshape(b.shape)
    np.testing.assert_allclose(from_bundle.affine, source.affine, atol=1e-5)
    assert np.abs(a - b).max() <= 1e-4 * (np.abs(b).max())
    if case == "mr-3d-rician":  # the recipe's floor holds in the bundle as in toolbox denoise
        assert a.min() >= 0 and b.min() >= 0


@pytest.mark.parametrize("dims,scale", [(2, 2), (3, 1)], ids=["2d-scale2", "3d"])
def test_a_bioimageio_package_validates_and_reproduces_its_test_tensors(tmp_path, dims, scale):
    """The BMZ zip passes bioimageio.core's own test (every weight format: TorchScript, ONNX,
    state dict) inside the export; here it is loaded again, its test tensors are run once more
    and a scale-2 model's output axes say 'twice the input'."""
    core = pytest.importorskip("bioimageio.core", reason="the export extra is not installed")
    generator = ({"type": "rrdbnet", "features": 8, "growth": 4, "blocks": 1} if scale == 2
                 else {"type": "unet", "features": [4, 4, 4, 4, 4, 4]})
    model = _checkpoint(tmp_path / "m.pt", generator, dims, noise_level_map=True, scale=scale,
                        normalize={"type": "percentile"})
    assert main(["export", str(model), "--format", "bioimageio", "-o", str(tmp_path / "m.zip")]) == 0
    summary = core.test_model(tmp_path / "m.zip")
    assert summary.status == "passed"
    tested = {d.name for d in summary.details}
    assert all(any(f"({w})" in name for name in tested) for w in ("torchscript", "onnx", "pytorch_state_dict"))
    description = core.load_model_description(tmp_path / "m.zip")
    (output,) = description.outputs
    space = [axis for axis in output.axes if axis.type == "space"]
    assert [a.scale for a in space] == [1 / scale] * dims
    assert all(a.size.tensor_id == "input" and a.size.axis_id == a.id for a in space)
    image = np.random.default_rng(0).random((1, 1) + (21, 30, 18)[:dims]).astype(np.float32) * 500 + 50
    predicted = core.predict(model=description, inputs={"input": image})
    (member,) = predicted.members.values()
    assert np.asarray(member.data).shape == (1, 1) + tuple(s * scale for s in image.shape[2:])


def test_a_ct_bioimageio_package_takes_and_gives_hounsfield_units(tmp_path):
    core = pytest.importorskip("bioimageio.core", reason="the export extra is not installed")
    assert main(["export", "--model", "ct", "--format", "bioimageio", "-o", str(tmp_path / "ct.zip")]) == 0
    description = core.load_model_description(tmp_path / "ct.zip")
    hu = np.asarray(nib.load(str(SAMPLES / "ct" / "test" / "chest_small.nii.gz")).dataobj, np.float32)[..., 0]
    noisy = hu + np.random.default_rng(2).normal(0, 40, hu.shape).astype(np.float32)
    predicted = core.predict(model=description, inputs={"input": noisy[None, None]})
    (member,) = predicted.members.values()
    denoised = np.asarray(member.data, np.float32)[0, 0]
    assert abs(float(np.median(denoised - hu))) < 5  # HU, not normalised units
    assert np.sqrt(np.mean((denoised - hu) ** 2)) < 0.6 * np.sqrt(np.mean((noisy - hu) ** 2))
