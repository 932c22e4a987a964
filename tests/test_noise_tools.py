"""Noise estimation from one image, the calibrated camera model, and `toolbox noise`."""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pytest
import torch

import toolbox
from conftest import tiny_recipe, write_recipe
from toolbox.cli import main
from toolbox.noise_estimation import estimate_gaussian, estimate_poisson_gaussian, estimate_rician


def _scene(shape=(256, 256)) -> np.ndarray:
    """Smooth structure with flat regions and edges at many intensity levels (0..1)."""
    y, x = np.mgrid[: shape[0], : shape[1]] / max(shape)
    image = 0.5 + 0.3 * np.sin(6 * x) * np.cos(4 * y)
    for cy, cx, r, v in ((0.3, 0.3, 0.12, 0.95), (0.7, 0.6, 0.15, 0.1), (0.4, 0.75, 0.08, 0.7)):
        image[(y - cy) ** 2 + (x - cx) ** 2 < r**2] = v
    image[:, : shape[1] // 8] = 0.0  # a dark margin (no light: the camera's offset and read noise)
    image[: shape[0] // 8] = 0.02
    return image


def test_gaussian_sigma_within_ten_percent():
    rng = np.random.default_rng(0)
    for sigma in (2.0, 7.0, 20.0):
        noisy = 1000 * _scene() + rng.normal(0, sigma, (256, 256))
        assert estimate_gaussian(noisy[None]).sigma == pytest.approx(sigma, rel=0.10)


def test_poisson_gaussian_gain_and_read_noise_within_ten_percent():
    rng = np.random.default_rng(1)
    gain, offset, read_sd = 2.0, 10.0, 6.0
    clean = offset + gain * 1500 * _scene((384, 384))  # up to 3000 ADU
    noisy = offset + gain * rng.poisson((clean - offset) / gain) + rng.normal(0, read_sd, clean.shape)
    found = estimate_poisson_gaussian(noisy[None], offset=offset)
    assert found.gain == pytest.approx(gain, rel=0.10)
    assert found.read_sd == pytest.approx(read_sd, rel=0.10)


def test_a_photon_noise_model_is_told_the_rms_of_its_noise():
    """The level a noise-conditional model trained on photon noise gets when the user does
    not say: the RMS of the noise over the image (what training measured on its patches),
    not the typical pixel's SD that the wavelet MAD reads where dark regions are quiet."""
    from toolbox.noise_estimation import estimated_sigma, level_noise_spec

    rng = np.random.default_rng(4)
    clean = _scene((384, 384))
    spec = {"type": "poisson_gaussian", "peak": [20, 2000], "sigma": [0.002, 0.02]}
    for peak in (30.0, 300.0):
        noisy = rng.poisson(clean * peak) / peak + rng.normal(0, 0.005, clean.shape)
        rms = float(np.sqrt(np.mean((noisy - clean) ** 2)))
        mad = float(estimate_gaussian(noisy[None]).sigma)
        assert mad < 0.93 * rms  # what the photon estimate is there for
        assert estimated_sigma(noisy[None], spec) == pytest.approx(rms, rel=0.05)
        # Other noise models keep the Gaussian estimate, and so does a model whose training
        # levels added its references' own noise as the MAD reads it (reference_noise).
        assert estimated_sigma(noisy[None], {"type": "gaussian", "sigma": 0.1}) == pytest.approx(mad)
        told = level_noise_spec({"noise": spec, "reference_noise": True})
        assert estimated_sigma(noisy[None], told) == pytest.approx(mad)
        assert level_noise_spec({"noise": spec, "reference_noise": False}) == spec


def test_rician_sigma_from_the_background_within_ten_percent():
    rng = np.random.default_rng(2)
    z, y, x = np.mgrid[:64, :96, :96]
    head = ((z - 32) / 28) ** 2 + ((y - 48) / 36) ** 2 + ((x - 48) / 36) ** 2 < 1
    signal = np.where(head, 300.0, 0.0)
    for sigma in (5.0, 15.0):
        magnitude = np.hypot(signal + rng.normal(0, sigma, signal.shape), rng.normal(0, sigma, signal.shape))
        assert estimate_rician(magnitude[None]).sigma == pytest.approx(sigma, rel=0.10)


def test_camera_noise_has_the_calibrated_mean_variance_line():
    camera = toolbox.build("noise_models", {"type": "camera", "gain": 2.0, "offset": 100.0, "read_sd": 5.0,
                                            "quantize": False})
    for level in (200.0, 1100.0):
        flat = torch.full((1, 256, 256), level)
        noisy = camera(flat, torch.Generator().manual_seed(0))
        assert float(noisy.mean()) == pytest.approx(level, rel=0.01)
        assert float(noisy.var()) == pytest.approx(2.0 * (level - 100.0) + 25.0, rel=0.05)
    saturating = toolbox.build("noise_models", {"type": "camera", "gain": 2.0, "saturation": 1000.0})
    assert float(saturating(torch.full((1, 32, 32), 990.0), torch.Generator().manual_seed(0)).max()) <= 1000.0


def test_noise_estimate_prints_a_snippet_that_reproduces_the_camera(tmp_path, capsys):
    rng = np.random.default_rng(3)
    clean = 20.0 + 3.0 * 800 * _scene((256, 256))
    noisy = 20.0 + 3.0 * rng.poisson((clean - 20.0) / 3.0) + rng.normal(0, 4.0, clean.shape)
    path = tmp_path / "frame.nii.gz"
    nib.save(nib.Nifti1Image(noisy.astype(np.float32)[:, :, None], np.eye(4)), str(path))
    assert main(["noise", "estimate", str(path), "--model", "poisson_gaussian", "--offset", "20"]) == 0
    out = capsys.readouterr().out
    found = re.search(r"type: camera, gain: ([0-9.]+), offset: 20, read_sd: ([0-9.]+)", out)
    assert found, out
    assert float(found.group(1)) == pytest.approx(3.0, rel=0.10)
    assert float(found.group(2)) == pytest.approx(4.0, rel=0.10)


def test_noise_simulate_writes_pairs_a_recipe_trains_on(small_ct, tmp_path):
    out = tmp_path / "pairs"
    assert main(["noise", "simulate", str(small_ct / "train"), "-o", str(out), "--copies", "2",
                 "--noise", "{type: low_dose_ct, I0: 3e4, views: 90}"]) == 0
    names = sorted(p.name for p in (out / "noisy").iterdir())
    assert names == sorted(p.name for p in (out / "clean").iterdir()) and len(names) == 4
    clean = nib.load(str(out / "clean" / "head.nii.gz")).get_fdata()
    noisy = nib.load(str(out / "noisy" / "head.nii.gz")).get_fdata()
    assert 5 < np.std(noisy - clean) < 200  # HU of low-dose noise, not a copy, not garbage
    recipe = tiny_recipe(small_ct)
    recipe["data"].pop("noise")
    recipe["data"].pop("train")
    recipe["data"]["paired"] = {"train_noisy": str(out / "noisy"), "train_clean": str(out / "clean")}
    recipe["data"]["noise"] = {"type": "low_dose_ct", "I0": 3e4, "views": 90}  # for the held-out image
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe)), "--out", str(tmp_path / "run")]) == 0
    # Refuses to write into an existing output unless told.
    assert main(["noise", "simulate", str(small_ct / "train"), "-o", str(out),
                 "--noise", "{type: gaussian, sigma: 0.1}"]) == 2
