"""Reading, normalisation, patches and held-out sets on real bundled images."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

import toolbox
import tifffile
import torch

from conftest import SAMPLES, tiny_recipe
from toolbox import build_data
from toolbox.data.datasets import PatchDataset
from toolbox.data.normalize import fit_normalizer
from toolbox.data.readers import read_image
from toolbox.io import expand_inputs, formats_of
from toolbox.errors import ToolboxError
from toolbox import validate_recipe as validate


@pytest.mark.parametrize(
    "path, dims, shape",
    [
        ("ct/train/head.nii.gz", 2, (1, 512, 512)),
        ("xray/train/chest.tif", 2, None),
        ("fluorescence/train/nuclei_left.tif", 2, None),
        ("mr3d/mni_t1_2mm.nii.gz", 3, (1, 80, 96, 80)),
    ],
)
def test_bundled_samples_read(path, dims, shape):
    image = read_image(SAMPLES / path, dims)
    assert image.array.dtype == np.float32 and image.array.ndim == dims + 1
    if shape:
        assert image.array.shape == shape
    assert image.array.std() > 0


def test_ct_sample_is_in_hounsfield_units():
    image = read_image(SAMPLES / "ct" / "train" / "abdomen.nii.gz", 2)
    assert image.array.min() == pytest.approx(-1024, abs=1)  # air
    assert np.percentile(image.array, 99) > 100  # soft tissue and bone above water


def test_16_bit_tiff_keeps_its_values(tmp_path):
    values = (np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) * 20).astype(np.uint16)
    tifffile.imwrite(tmp_path / "x.tif", values)
    image = read_image(tmp_path / "x.tif", 2)
    assert image.array.max() == values.max() and sorted(image.array.shape[1:]) == [48, 64]


def test_nan_voxels_are_refused_with_the_file_name(tmp_path):
    data = np.ones((8, 8, 8), np.float32)
    data[2, 3, 4] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    with pytest.raises(ToolboxError, match=r"nan.nii.gz: 1 voxel\(s\) are NaN"):
        read_image(tmp_path / "nan.nii.gz", 3)


def test_truncated_file_is_one_clear_error(tmp_path):
    good = (SAMPLES / "ct" / "train" / "head.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(good[: len(good) // 3])
    with pytest.raises(ToolboxError, match="cut.nii.gz: cannot read this image"):
        read_image(tmp_path / "cut.nii.gz", 2)


def test_wrong_dimensionality_is_explained():
    with pytest.raises(ToolboxError, match="a 2D model needs 2 spatial axes"):
        read_image(SAMPLES / "mr3d" / "mni_t1_2mm.nii.gz", 2)


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(ToolboxError, match="no such file or folder"):
        expand_inputs(tmp_path / "nope", formats_of(toolbox.plugin_registry()))
    with pytest.raises(ToolboxError, match="no images"):
        expand_inputs(tmp_path, formats_of(toolbox.plugin_registry()))


def test_window_and_percentile_normalisers_invert():
    array = np.linspace(-1000, 2000, 1000, dtype=np.float32).reshape(1, 10, 100)
    window = fit_normalizer({"type": "window", "low": -1000, "high": 1000}, array)
    # Linear and unclipped: bone above the window and air below it keep their values.
    assert window.forward(array).min() == 0.0 and window.forward(array).max() == 1.5
    assert np.allclose(window.inverse(window.forward(array)), array, atol=1e-3)
    percentile = fit_normalizer({"type": "percentile"}, array)
    assert np.allclose(percentile.inverse(percentile.forward(array)), array, atol=1e-2)


def test_flat_image_does_not_divide_by_zero():
    flat = np.full((1, 5, 5), 7.0, np.float32)
    out = fit_normalizer({"type": "minmax"}, flat).forward(flat)
    assert np.isfinite(out).all()


def _noise(clean, generator):
    return clean + 0.1 * torch.randn(clean.shape, generator=generator)


def test_patch_samples_are_a_function_of_seed_and_index():
    images = [np.random.default_rng(0).random((1, 40, 50), dtype=np.float32)]
    a = PatchDataset(images, (16, 16), seed=1, noise=_noise)
    b = PatchDataset(images, (16, 16), seed=1, noise=_noise)
    c = PatchDataset(images, (16, 16), seed=2, noise=_noise)
    assert torch.equal(a[7]["input"], b[7]["input"]) and torch.equal(a[7]["target"], b[7]["target"])
    assert not torch.equal(a[7]["target"], c[7]["target"])
    assert a[7]["input"].shape == (1, 16, 16)


def test_images_smaller_than_the_patch_are_padded():
    images = [np.random.default_rng(0).random((1, 10, 30), dtype=np.float32)]
    sample = PatchDataset(images, (16, 16), seed=0, noise=_noise, augment=False)[0]
    assert sample["target"].shape == (1, 16, 16)


def test_build_data_from_a_recipe(small_ct):
    checked = validate(tiny_recipe(small_ct), "test")
    bundle = build_data(checked.data)
    assert len(bundle.held_out) == 1
    item = bundle.held_out[0]
    assert item.name == "spine.nii.gz" and item.clean.shape == item.noisy.shape
    # In HU, as read; the noise level (0.1 of the -1000..1000 window) is 200 HU.
    assert item.data_range == 2000.0 and item.clean.max() > 400  # a crop of the spine, HU
    assert abs(float(np.std(item.noisy - item.clean)) - 200) < 10
    # Held-out noise is fixed by data.val_seed: the same on every validation.
    again = build_data(checked.data).held_out[0]
    assert np.array_equal(item.noisy, again.noisy)
    sample = bundle.train[0]
    assert sample["input"].shape == (1, 32, 32)


def test_a_training_source_normalised_its_own_way(small_ct):
    """A radiograph among CT slices: its 16-bit values percentile-normalised to the CT's
    0..1 footing, not put through the HU window (which would make them 3..17)."""
    chest = SAMPLES / "xray" / "train" / "chest.tif"
    recipe = tiny_recipe(small_ct)
    recipe["data"]["train"] = [str(small_ct / "train"),
                               {"images": str(chest), "normalize": {"type": "percentile", "low": 0.5, "high": 99.5}}]
    clean = build_data(validate(recipe, "test").data).train.clean
    assert len(clean) == 3
    for slice_hu in clean[:2]:  # the CT crops, through the window
        assert -0.05 < float(slice_hu.min()) and float(slice_hu.max()) < 2.1
    radiograph = clean[2]
    raw = tifffile.imread(chest).astype(np.float32)[None]
    expected = fit_normalizer({"type": "percentile", "low": 0.5, "high": 99.5}, raw).forward(raw)
    assert np.allclose(np.sort(radiograph.ravel()), np.sort(expected.ravel()), atol=1e-5)
    assert -0.1 < float(np.percentile(radiograph, 0.5)) < 0.1 and 0.9 < float(np.percentile(radiograph, 99.5)) < 1.1


@pytest.mark.parametrize("entry, message", [
    ({"images": "x", "normalise": {}}, r"data.train\[1\].normalise': unknown key 'normalise'. Did you mean 'normalize'"),
    ({"images": "x", "normalize": {"type": "window"}}, r"data.train\[1\].normalize': a window needs low and high"),
    ({"normalize": {"type": "minmax"}}, r"data.train\[1\].images': is required"),
    (3, r"data.train\[1\]': expected a path or \{images"),
])
def test_a_wrong_training_source_is_one_clear_error(small_ct, entry, message):
    recipe = tiny_recipe(small_ct)
    recipe["data"]["train"] = [str(small_ct / "train"), entry]
    with pytest.raises(toolbox.RecipeError, match=message):
        validate(recipe, "test")


def test_paired_folders_match_by_name(tmp_path, small_ct):
    noisy, clean = tmp_path / "noisy", tmp_path / "clean"
    noisy.mkdir(), clean.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        data = np.random.default_rng(len(name)).random((40, 40)).astype(np.float32)
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(clean / name))
        nib.save(nib.Nifti1Image(data + 0.1, np.eye(4)), str(noisy / name))
    recipe = tiny_recipe(small_ct)
    recipe["data"].pop("train"), recipe["data"].pop("val"), recipe["data"].pop("noise")
    recipe["data"]["normalize"] = {"type": "minmax"}
    recipe["data"]["paired"] = {"train_noisy": str(noisy), "train_clean": str(clean),
                                "val_noisy": str(noisy), "val_clean": str(clean)}
    bundle = build_data(validate(recipe, "test").data)
    sample = bundle.train[0]
    assert not torch.equal(sample["input"], sample["target"])
    (clean / "b.nii.gz").unlink()
    with pytest.raises(ToolboxError, match="no clean image named like the noisy b.nii.gz"):
        build_data(validate(recipe, "test").data)
