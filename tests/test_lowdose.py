"""Low-dose CT noise (issue 12): the physics of photon counts and filtered back-projection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import toolbox
from conftest import tiny_recipe, write_recipe

SIZE, PIXEL_MM = 192, 1.25


def _phantom(inserts: bool = False) -> torch.Tensor:
    """A water disc (0 HU, 200 mm across) in air; optionally two dense inserts (3000 HU, 30 mm)
    on the horizontal axis, 60 mm either side of the centre."""
    y, x = (np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2) * PIXEL_MM
    hu = np.where(x**2 + y**2 <= 100**2, 0.0, -1000.0)
    if inserts:
        for cx in (-60, 60):
            hu[(x - cx) ** 2 + y**2 <= 15**2] = 3000.0
    return torch.from_numpy(hu.astype(np.float32))[None]


def _noise(phantom, seed=0, **options) -> np.ndarray:
    model = toolbox.build("noise_models", {"type": "low_dose_ct", "views": 360, "electronic_sd": 0.0, **options})
    noisy = model(phantom, torch.Generator().manual_seed(seed), spacing=(PIXEL_MM, PIXEL_MM))
    return (noisy - phantom)[0].numpy()


def _interior(radius_mm=75.0):
    y, x = (np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2) * PIXEL_MM
    return x**2 + y**2 <= radius_mm**2


def test_noise_sd_scales_as_one_over_root_dose():
    phantom, inside = _phantom(), _interior()
    low, high = _noise(phantom, I0=2e4)[inside].std(), _noise(phantom, I0=2e5)[inside].std()
    assert low / high == pytest.approx(np.sqrt(10), rel=0.10)
    assert 5 < high < 60  # tens of HU at a clinical-ish dose through 200 mm of water


def test_mean_hu_of_a_uniform_region_is_kept():
    noise = _noise(_phantom(), I0=2e4)
    assert abs(noise[_interior()].mean()) < 3.0  # HU


def test_noise_is_larger_behind_dense_inserts_streaks():
    """The rays through both inserts carry few photons: a streak of noise joins them."""
    y, x = (np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2) * PIXEL_MM
    band = (np.abs(y) < 6) & (np.abs(x) < 40)  # on the line between the inserts
    aside = (np.abs(y) > 25) & (np.abs(y) < 40) & (np.abs(x) < 40)  # the same width, off it
    plain, dense = _noise(_phantom(), I0=5e4), _noise(_phantom(inserts=True), I0=5e4)
    assert dense[band].std() > 1.3 * plain[band].std()
    assert dense[band].std() / dense[aside].std() > 1.2 * plain[band].std() / plain[aside].std()


def test_electronic_noise_matters_at_low_counts():
    phantom, inside = _phantom(), _interior()
    quiet = _noise(phantom, I0=3e3)[inside].std()
    loud = _noise(phantom, I0=3e3, electronic_sd=20.0)[inside].std()
    assert loud > 1.05 * quiet


def test_noise_insertion_adds_only_the_missing_dose():
    """From an image scanned at 2e5 to 5e4: the inserted noise has the variance of a 5e4
    scan minus that of a 2e5 scan."""
    phantom, inside = _phantom(), _interior()
    inserted = _noise(phantom, I0=5e4, image_I0=2e5)[inside].var()
    expected = _noise(phantom, I0=5e4, seed=1)[inside].var() - _noise(phantom, I0=2e5, seed=2)[inside].var()
    assert inserted == pytest.approx(expected, rel=0.15)


def test_dose_fraction_and_seeds():
    phantom = _phantom()
    by_dose = _noise(phantom, dose=0.25, reference_I0=8e4)
    by_I0 = _noise(phantom, I0=2e4)
    np.testing.assert_allclose(by_dose, by_I0, atol=1e-3)  # the same I0, the same seed
    assert not np.allclose(_noise(phantom, seed=3, I0=2e4), by_I0)


def test_volumes_go_slice_by_slice_and_spacing_is_required():
    model = toolbox.build("noise_models", {"type": "low_dose_ct", "views": 64, "I0": 1e4})
    volume = _phantom()[:, None].repeat(1, 3, 1, 1)[:, :, ::4, ::4].contiguous()  # (1, 3, 48, 48)
    noisy = model(volume, torch.Generator().manual_seed(0), spacing=(2.0, 5.0, 5.0), slice_axis=0)
    assert noisy.shape == volume.shape and not torch.equal(noisy[:, 0], noisy[:, 1])
    with pytest.raises(ValueError, match="pixel spacing"):
        model(volume, torch.Generator().manual_seed(0), spacing=None, slice_axis=0)


def test_a_recipe_trains_on_low_dose_ct(small_ct, tmp_path):
    """Noisy copies are drawn once per training image (at the slice's own spacing) and the
    held-out image gets its own; two steps run end to end."""
    from toolbox.cli import main

    recipe = tiny_recipe(small_ct)
    recipe["data"]["noise"] = {"type": "low_dose_ct", "I0": [2e4, 1e5], "views": 90}
    recipe["data"]["noise_copies"] = 2
    recipe["scheme"] = {"type": "supervised"}
    recipe["generator"] = {"type": "unet", "features": [4, 4, 4, 4, 4, 4]}
    recipe["losses"] = {"pix": {"type": "mse"}}
    recipe.pop("discriminator", None)
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe)), "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "eval.json").is_file()

