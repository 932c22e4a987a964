"""Hostile inputs to `toolbox denoise`: each fails with one line naming the file, exit 2,
no traceback, nothing written, and the input untouched (or, where it is a valid image,
succeeds)."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from toolbox.cli import main


@pytest.fixture
def model(percentile_model):
    return percentile_model


def _denoise(model, source, output):
    return subprocess.run([sys.executable, "-m", "toolbox", "denoise", str(model), str(source), "-o", str(output)],
                          capture_output=True, text=True, timeout=300)


def _assert_clean_failure(result, mentions, output):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.stderr
    assert mentions in lines[0], lines[0]
    assert not output.exists()


def _nifti(path, data):
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def test_zero_size_image(model, tmp_path):
    source = _nifti(tmp_path / "empty.nii.gz", np.zeros((0, 8, 8), np.float32))
    _assert_clean_failure(_denoise(model, source, tmp_path / "o.nii.gz"), "empty.nii.gz", tmp_path / "o.nii.gz")


def test_one_voxel_image_is_denoised(model, tmp_path):
    source = _nifti(tmp_path / "one.nii.gz", np.ones((1, 1), np.float32))
    result = _denoise(model, source, tmp_path / "o.nii.gz")
    assert result.returncode == 0, result.stderr
    assert nib.load(str(tmp_path / "o.nii.gz")).shape == (1, 1)


def test_4d_input_with_the_wrong_channel_count(model, tmp_path):
    source = _nifti(tmp_path / "four.nii.gz", np.random.default_rng(0).random((16, 16, 4, 3), dtype=np.float32))
    result = _denoise(model, source, tmp_path / "o.nii.gz")
    _assert_clean_failure(result, "4th axis", tmp_path / "o.nii.gz")


def test_output_folder_that_cannot_be_created(model, tmp_path, small_ct):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    output = blocker / "out.nii.gz"
    source = small_ct / "val" / "spine.nii.gz"
    before = source.read_bytes()
    result = _denoise(model, source, output)
    _assert_clean_failure(result, "a_file", output)
    assert source.read_bytes() == before


def test_not_an_image_with_an_image_name(model, tmp_path):
    source = tmp_path / "notes.tif"
    source.write_text("meeting notes, not a microscope image\n" * 20)
    _assert_clean_failure(_denoise(model, source, tmp_path / "o.tif"), "notes.tif", tmp_path / "o.tif")


def test_unknown_suffix(model, tmp_path):
    source = tmp_path / "scan.xyz"
    source.write_bytes(b"\x00" * 100)
    _assert_clean_failure(_denoise(model, source, tmp_path / "o.xyz"), "unknown image type", tmp_path / "o.xyz")


def test_missing_model(tmp_path, small_ct):
    result = _denoise(tmp_path / "no_such_run", small_ct / "val" / "spine.nii.gz", tmp_path / "o.nii.gz")
    _assert_clean_failure(result, "no such run folder or checkpoint", tmp_path / "o.nii.gz")


@pytest.fixture(scope="module")
def model_3d(tmp_path_factory):
    """A 3D model (2 training steps on crops of the bundled MR volume)."""
    from conftest import tiny_3d_recipe, write_recipe

    root = tmp_path_factory.mktemp("model_3d")
    recipe = tiny_3d_recipe(root)
    assert main(["run", str(write_recipe(root / "r.yaml", recipe)), "--out", str(root / "run")]) == 0
    return root / "run"


def test_a_refused_input_shows_no_progress_bar(model_3d, tmp_path):
    source = _nifti(tmp_path / "slice.nii.gz", np.random.default_rng(0).random((24, 24), dtype=np.float32))
    result = _denoise(model_3d, source, tmp_path / "o.nii.gz")
    _assert_clean_failure(result, "3D model and the input is a 2D image", tmp_path / "o.nii.gz")
    assert "slice.nii.gz" in result.stderr
    assert result.stdout.strip() == "", result.stdout  # no empty "0/None" bar before the error
