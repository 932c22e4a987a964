"""Training without clean images: Noise2Void's blind spot and Noise2Noise pairs."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch

import toolbox
from conftest import tiny_recipe, write_recipe
from toolbox.cli import main
from toolbox_plugins.self_supervised import blind_spot


def test_a_masked_pixel_never_sees_itself():
    x = torch.arange(2 * 1 * 9 * 11, dtype=torch.float32).reshape(2, 1, 9, 11)  # every value unique
    for seed in range(20):
        masked, mask = blind_spot(x, 0.5, 2, torch.Generator().manual_seed(seed))
        assert mask.any()
        assert not torch.any(masked[mask] == x[mask])
        assert torch.equal(masked[~mask], x[~mask])
    volume = torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(1, 1, 4, 5, 6)
    masked, mask = blind_spot(volume, 0.6, 1, torch.Generator().manual_seed(0))
    assert not torch.any(masked[mask] == volume[mask])


class CopyNetwork(torch.nn.Module):
    """A 'denoiser' that hands its input back (plus one weight so an optimizer has work)."""

    def __init__(self, spatial_dims, in_channels, out_channels):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.scale * x


class CopyPlugin:
    @toolbox.hookimpl
    def register_generators(self, register):
        register("copy_net", CopyNetwork)


def _n2v(small_ct, **scheme):
    recipe = tiny_recipe(small_ct, generator={"type": "copy_net"}, losses={},
                         scheme={"type": "noise2void", **scheme})
    recipe.pop("discriminator")
    recipe["optimizers"].pop("discriminator")
    checked = toolbox.validate_recipe(recipe, "test")
    parts = toolbox.Parts(checked.data, "test", torch.device("cpu"), toolbox.plugin_registry())
    return toolbox.build("schemes", checked["scheme"], parts=parts)


def test_a_network_that_copies_its_input_cannot_reach_zero_loss(small_ct, plugin_for_one_test):
    plugin_for_one_test(CopyPlugin())
    scheme = _n2v(small_ct, fraction=0.05)
    noisy = 0.5 + 0.1 * torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    loss = float(scheme.masked_loss(noisy))
    assert loss == pytest.approx(2 * 0.1**2, rel=0.3)  # a neighbour's independent noise, twice the variance


def test_noise2void_never_reads_the_clean_target(small_ct, plugin_for_one_test):
    plugin_for_one_test(CopyPlugin())
    scheme = _n2v(small_ct)

    class Forbidden(dict):
        def __getitem__(self, key):
            if key == "target":
                raise AssertionError("noise2void read the clean target")
            return super().__getitem__(key)

    batch = Forbidden(input=torch.rand(2, 1, 32, 32), target=torch.rand(2, 1, 32, 32))
    terms = scheme.train_step([batch], 1)
    assert set(terms) == {"l_g_n2v_mse", "l_g_total"}


def test_noise2noise_pairs_by_file_name_and_swaps_input_and_target(small_ct, tmp_path):
    """Two acquisitions matched by name (the second in train_clean) train end to end."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    rng = np.random.default_rng(0)
    for path in sorted((small_ct / "train").iterdir()):
        image = nib.load(str(path))
        data = np.asarray(image.dataobj).astype(np.float32)
        for folder in (first, second):
            noisy = data + rng.normal(0, 80, data.shape).astype(np.float32)
            nib.save(nib.Nifti1Image(noisy, image.affine), str(folder / path.name))
    recipe = tiny_recipe(small_ct, scheme={"type": "noise2noise"}, losses={"mse": {"type": "mse"}},
                         generator={"type": "unet", "features": [4, 4, 4, 4, 4, 4]})
    recipe.pop("discriminator")
    recipe["optimizers"].pop("discriminator")
    recipe["data"].pop("train")
    recipe["data"]["paired"] = {"train_noisy": str(first), "train_clean": str(second)}
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe)), "--out", str(tmp_path / "run")]) == 0


def test_frame_pairs_take_adjacent_frames_of_a_stack(tmp_path):
    frames = np.stack([np.full((24, 24), 100.0 * t, dtype=np.float32) for t in range(4)])
    folder = tmp_path / "series"
    folder.mkdir()
    tifffile.imwrite(folder / "movie.tif", frames, metadata={"axes": "TYX"})
    recipe = {"data": {"train": str(folder), "val": str(folder), "spatial_dims": 2, "patch_size": [16, 16],
                       "normalize": {"type": "window", "low": 0, "high": 300}, "frame_pairs": True, "augment": False,
                       "noise": {"type": "gaussian", "sigma": 0.01}},
              "generator": {"type": "unet"}, "losses": {"mse": {"type": "mse"}},
              "optimizers": {"generator": {"type": "adam"}}, "scheme": {"type": "noise2noise"},
              "train": {"steps": 1}}
    bundle = toolbox.build_data(toolbox.validate_recipe(recipe, "test").data)
    sample = bundle.train[0]
    # Frame t in, frame t + 1 out: the target is one frame step (100 / 300 of the window) brighter.
    assert float((sample["target"] - sample["input"]).mean()) == pytest.approx(100 / 300, abs=1e-4)


def test_noise2noise_with_a_second_noise_draw(tmp_path, small_ct):
    recipe = tiny_recipe(small_ct)
    recipe["data"]["target"] = "noisy_copy"
    checked = toolbox.validate_recipe(recipe, "test")
    bundle = toolbox.build_data(checked.data)
    sample = bundle.train[0]
    difference = sample["target"] - sample["input"]
    # Two independent draws at sigma 0.1: their difference has sigma 0.1 * sqrt(2).
    assert float(difference.std()) == pytest.approx(0.1 * np.sqrt(2), rel=0.15)


def test_noise2void_on_real_noisy_images_scored_against_paired_references(small_ct, tmp_path, plugin_for_one_test):
    """What a user without clean training images has: noisy images to train on (noise
    `none`), and a few noisy / clean pairs to score on."""
    noisy_train, val_noisy = tmp_path / "noisy", tmp_path / "val_noisy"
    noisy_train.mkdir(), val_noisy.mkdir()
    rng = np.random.default_rng(0)
    for folder, source in ((noisy_train, small_ct / "train"), (val_noisy, small_ct / "val")):
        for path in sorted(source.iterdir()):
            image = nib.load(str(path))
            data = np.asarray(image.dataobj).astype(np.float32) + rng.normal(0, 60, image.shape).astype(np.float32)
            nib.save(nib.Nifti1Image(data, image.affine), str(folder / path.name))
    recipe = tiny_recipe(small_ct, scheme={"type": "noise2void"}, losses={},
                         generator={"type": "unet", "features": [4, 4, 4, 4, 4, 4], "residual": False})
    recipe.pop("discriminator")
    recipe["optimizers"].pop("discriminator")
    recipe["data"].update(train=str(noisy_train), noise={"type": "none"},
                          paired={"val_noisy": str(val_noisy), "val_clean": str(small_ct / "val")})
    recipe["data"].pop("val")
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe)), "--out", str(tmp_path / "run")]) == 0
    report = __import__("json").loads((tmp_path / "run" / "eval.json").read_text())
    assert report["mean"]["psnr_noisy"] < 40  # scored on the real noisy image, not on a copy of the clean one
