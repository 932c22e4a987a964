"""The `spectrum` loss: power per frequency band of the output against the target's."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from conftest import SAMPLES, tiny_recipe, write_recipe
from toolbox.cli import main
from toolbox.errors import RecipeError
from toolbox.plugins import get_registry
from toolbox.texture import high_frequency_ratio, radial_spectrum


def spectrum_loss(**options):
    return get_registry().build("losses", {"type": "spectrum", **options}, "recipe.yaml", "losses.tex")


def test_band_power_is_the_variance_of_white_noise_in_every_band_2d_and_3d():
    loss = spectrum_loss(bands=4)
    generator = torch.Generator().manual_seed(0)
    for shape in ((32, 1, 64, 64), (16, 1, 24, 32, 32)):
        noise = 3.0 * torch.randn(shape, generator=generator)
        power = loss.band_power(noise)
        assert power.shape == (shape[0], 1, 4)
        assert torch.allclose(power.mean(0), torch.full((1, 4), 9.0), rtol=0.1)


def test_band_power_agrees_with_the_texture_score_spectrum():
    # The loss and toolbox.texture (what evaluate reports) measure the same thing.
    spine = np.asarray(nib.load(str(SAMPLES / "ct" / "test" / "spine.nii.gz")).dataobj, dtype=np.float64)
    plane = spine[128:384, 128:384, 0]
    centres, power = radial_spectrum(plane[None])
    loss = spectrum_loss(low=0.25, bands=16)  # the texture score's 16 upper bins, one band each
    bands = loss.band_power(torch.from_numpy(plane)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(bands, power[centres >= 0.25], rtol=1e-4)


def test_zero_for_the_target_itself_and_larger_the_more_it_is_blurred():
    loss = spectrum_loss()
    image = torch.randn(2, 1, 48, 48, generator=torch.Generator().manual_seed(1))
    assert loss(image, image).item() == 0.0
    values = [loss(torch.from_numpy(gaussian_filter(image.numpy(), (0, 0, s, s))), image).item()
              for s in (0.5, 1.0, 2.0)]
    assert 0 < values[0] < values[1] < values[2]


def test_descending_it_with_a_pixel_loss_brings_a_blurred_ct_back_to_the_clean_texture():
    # From a fidelity denoiser's blur: the pixel loss keeps the image, the spectrum loss
    # restores the fine-band power, measured by the texture score that evaluate prints.
    spine = np.asarray(nib.load(str(SAMPLES / "ct" / "test" / "spine.nii.gz")).dataobj, dtype=np.float32)
    clean = (spine[200:296, 200:296, 0] + 1000) / 2000
    blurred = gaussian_filter(clean, 1.2)
    assert high_frequency_ratio(blurred[None], clean[None]) < 0.3
    target = torch.from_numpy(clean)[None, None]
    output = torch.from_numpy(blurred)[None, None].clone().requires_grad_(True)
    loss = spectrum_loss(low=0.125, bands=6)
    optimiser = torch.optim.Adam([output], lr=2e-4)
    for _ in range(300):
        optimiser.zero_grad()
        (torch.nn.functional.l1_loss(output, target) + 0.05 * loss(output, target)).backward()
        optimiser.step()
    restored = output.detach().numpy()[0]
    assert 0.8 < high_frequency_ratio(restored, clean[None]) < 1.25
    assert np.abs(restored - clean).mean() < np.abs(blurred - clean).mean()


@pytest.mark.parametrize("options, words", [({"bands": 0}, "bands must be at least 1"),
                                            ({"low": 0.5}, "low must be in [0, 0.5)"),
                                            ({"eps": 0}, "eps must be > 0"),
                                            ({"tile": 4}, "tile must be at least 8")])
def test_bad_options_are_refused_in_one_line(options, words):
    with pytest.raises((RecipeError, ValueError), match=words.replace("[", r"\[").replace(")", r"\)")):
        spectrum_loss(**options)


def test_a_recipe_trains_with_it_next_to_the_adversarial_loss(tmp_path, small_ct):
    recipe = tiny_recipe(small_ct)
    recipe["losses"]["tex"] = {"type": "spectrum", "weight": 0.1}
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe)), "--out", str(tmp_path / "run")]) == 0
    logged = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "l_g_tex" in logged


def test_with_tiles_detail_must_be_where_the_target_has_it():
    # Texture in the left half of the target, in the right half of the output: the same
    # power over the whole patch, so only the per-tile measure sees the misplaced detail.
    texture = torch.randn(1, 1, 64, 32, generator=torch.Generator().manual_seed(2))
    flat = torch.zeros(1, 1, 64, 32)
    target, output = torch.cat([texture, flat], dim=-1), torch.cat([flat, texture], dim=-1)
    whole, tiled = spectrum_loss()(output, target).item(), spectrum_loss(tile=32)(output, target).item()
    assert whole < 0.5 and tiled > 5 and tiled > 20 * whole
    tiles = spectrum_loss(tile=32).tiles(target)
    assert tiles.shape == (4, 1, 32, 32) and torch.equal(tiles[1], target[0, :, :32, 32:])


def test_a_tile_larger_than_the_training_patch_is_a_recipe_error(tmp_path, small_ct, capsys):
    recipe = tiny_recipe(small_ct)
    recipe["losses"]["tex"] = {"type": "spectrum", "tile": 64}
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe)), "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert "losses.tex" in error and "tile 64 is larger than the patch [32, 32]" in error
    assert len(error.splitlines()) == 1 and not (tmp_path / "run").exists()
