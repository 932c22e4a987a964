"""Contract tests over every registered part (built-in or installed), in 2D and 3D.

The checks themselves live in ``toolbox.testing`` (public), so that a third-party plugin's
tests run exactly these; here they run on every registered part of every kind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import toolbox
import toolbox.testing as contract
from toolbox.registry import KINDS

DATA = Path(__file__).parent / "data"
SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def _names(kind):
    return sorted(toolbox.components(kind))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", _names("generators"))
def test_generator_contract(name, dims):
    contract.check_generator(name, dims)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", _names("discriminators"))
def test_discriminator_contract(name, dims):
    contract.check_discriminator(name, dims)


@pytest.mark.parametrize("name", _names("exporters"))
def test_exporter_contract(name):
    pytest.importorskip("onnxruntime", reason='the export extra is not installed: pip install "denoise-toolbox[export]"')
    contract.check_exporter(name)


@pytest.mark.parametrize("name", _names("losses"))
def test_loss_contract(name):
    contract.check_loss(name)


@pytest.mark.parametrize("name", _names("noise_models"))
def test_noise_model_contract(name):
    contract.check_noise_model(name)


@pytest.mark.parametrize("name", _names("optimizers"))
def test_optimizer_contract(name):
    contract.check_optimizer(name)


@pytest.mark.parametrize("name", _names("readers"))
def test_reader_contract(name):
    contract.check_reader(name)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", _names("schemes"))
def test_scheme_contract(name, dims):
    contract.check_scheme(name, dims)


def _format_samples(tmp_path: Path) -> dict[str, Path]:
    """One real file per built-in format: bundled ones, and small ones made with each
    format's own library."""
    import itk
    from PIL import Image

    png = tmp_path / "grey16.png"
    Image.fromarray((np.arange(48 * 40, dtype=np.uint16).reshape(48, 40) * 13)).save(png)
    nrrd = tmp_path / "volume.nrrd"
    image = itk.image_from_array(np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8) - 100)
    image.SetSpacing((0.5, 0.7, 2.0))
    itk.imwrite(image, str(nrrd))
    return {"dicom": DATA / "JPEG-LL.dcm", "nifti": SAMPLES / "ct" / "train" / "head.nii.gz",
            "tiff": SAMPLES / "xray" / "train" / "chest.tif", "png": png, "itk": nrrd}


@pytest.mark.parametrize("name", _names("formats"))
def test_format_contract(name, tmp_path):
    samples = _format_samples(tmp_path)
    if name not in samples:
        pytest.skip(f"no sample file for the installed format {name}")
    contract.check_format(name, samples[name], tmp_path / "out")


@pytest.mark.parametrize("name", _names("models"))
def test_pretrained_model_contract(name):
    contract.check_model(name)


def test_every_kind_has_a_contract_check():
    checks = {"generators": "check_generator", "discriminators": "check_discriminator", "losses": "check_loss",
              "optimizers": "check_optimizer", "noise_models": "check_noise_model", "readers": "check_reader",
              "formats": "check_format", "schemes": "check_scheme", "models": "check_model",
              "exporters": "check_exporter"}
    assert set(checks) == set(KINDS)
    assert all(callable(getattr(contract, check)) for check in checks.values())
