"""Volumes in, volumes out: DICOM series, NIfTI, TIFF and PNG round trips through `toolbox denoise`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
from pydicom.uid import generate_uid

from conftest import SAMPLES, tiny_3d_recipe, tiny_recipe, write_recipe
from dicom_series import ct_slices, write_ct_series
from toolbox.cli import main
import toolbox
from toolbox import read_volume
from toolbox.errors import ToolboxError


@pytest.fixture(scope="module")
def ct_model(tmp_path_factory, small_ct):
    """A 2D CT model (window normalisation), trained for 2 steps."""
    root = tmp_path_factory.mktemp("ct_model")
    recipe = write_recipe(root / "r.yaml", tiny_recipe(small_ct))
    assert main(["run", str(recipe), "--out", str(root / "run")]) == 0
    return root / "run"


@pytest.fixture
def series(tmp_path):
    hu = ct_slices(6)
    write_ct_series(tmp_path / "series", hu)
    return tmp_path / "series", hu


def _itk_series(folder):
    names = itk.GDCMSeriesFileNames.New(Directory=str(folder))
    files = names.GetFileNames(names.GetSeriesUIDs()[0])
    return itk.imread(files)


def test_dicom_series_is_read_in_position_order(series):
    folder, hu = series
    volume = read_volume(folder)
    assert volume.format == "dicom" and volume.array.shape == (1, 6, 128, 128)
    # Slices come back in position order (file names are shuffled) and in HU.
    assert np.allclose(volume.array[0], np.clip(np.rint(hu), -1024, 3071), atol=0.5)


def test_dicom_series_round_trip_keeps_geometry_and_makes_a_derived_series(series, ct_model, tmp_path):
    folder, _ = series
    out = tmp_path / "denoised"
    assert main(["denoise", str(ct_model), str(folder), "-o", str(out)]) == 0
    before, after = _itk_series(folder), _itk_series(out)
    assert tuple(itk.size(before)) == tuple(itk.size(after))
    assert np.allclose(itk.spacing(before), itk.spacing(after))
    assert np.allclose(itk.origin(before), itk.origin(after))
    assert np.allclose(np.array(before.GetDirection()), np.array(after.GetDirection()))

    originals = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in folder.iterdir()}
    outputs = [pydicom.dcmread(p) for p in sorted(out.iterdir())]
    assert len(outputs) == len(originals) == 6
    first = next(iter(originals.values()))
    assert len({d.SeriesInstanceUID for d in outputs}) == 1
    assert outputs[0].SeriesInstanceUID != first.SeriesInstanceUID
    for ds in outputs:
        source = originals[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert ds.SOPInstanceUID not in originals
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
        assert list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"]
        assert "tiny" in ds.SeriesDescription and "tiny" in ds.DerivationDescription
        assert ds.ImagePositionPatient == source.ImagePositionPatient
        assert ds.ImageOrientationPatient == source.ImageOrientationPatient
        assert ds.PixelSpacing == source.PixelSpacing and ds.SliceThickness == source.SliceThickness
        assert (ds.RescaleSlope, ds.RescaleIntercept) == (source.RescaleSlope, source.RescaleIntercept)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert hu.min() >= -1024 and hu.max() <= 3071  # within what 12 stored bits hold
    # Denoised, not copied: some values changed.
    assert any(not np.array_equal(ds.pixel_array, originals[ds.SourceImageSequence[0].ReferencedSOPInstanceUID].pixel_array)
               for ds in outputs)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed")
def test_dicom_output_passes_the_dicom_validator(series, ct_model, tmp_path):
    folder, _ = series
    out = tmp_path / "denoised"
    assert main(["denoise", str(ct_model), str(folder), "-o", str(out)]) == 0
    for path in sorted(out.iterdir()):
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
        assert not errors, errors


def test_several_series_in_one_folder_are_listed(series, ct_model, tmp_path, capsys):
    folder, hu = series
    other_uid = generate_uid()
    write_ct_series(folder / "second", hu[:3], series_uid=other_uid, description="other")
    assert main(["denoise", str(ct_model), str(folder), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "holds 2 DICOM series; pick one with --series UID" in err and other_uid in err
    assert main(["denoise", str(ct_model), str(folder), "-o", str(tmp_path / "out"),
                 "--series", other_uid]) == 0
    assert len(list((tmp_path / "out").iterdir())) == 3


def test_nifti_with_an_oblique_affine_keeps_it(ct_model, tmp_path):
    hu = ct_slices(5, size=64).transpose(1, 2, 0)  # (x, y, z)
    affine = np.array([[0.8, 0.1, 0.0, -90.5], [-0.05, 0.75, 0.3, 12.25],
                       [0.0, -0.2, 2.5, 40.0], [0, 0, 0, 1]])
    image = nib.Nifti1Image(np.rint(hu).astype(np.int16), affine)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, str(tmp_path / "ct.nii.gz"))
    out = tmp_path / "out.nii.gz"
    assert main(["denoise", str(ct_model), str(tmp_path / "ct.nii.gz"), "-o", str(out)]) == 0
    result = nib.load(str(out))
    assert np.allclose(result.affine, affine, atol=1e-5)
    assert result.shape == hu.shape and result.get_data_dtype() == np.int16
    assert result.header.get_xyzt_units() == ("mm", "sec")
    assert not np.array_equal(np.asarray(result.dataobj), np.asarray(image.dataobj))


def test_16_bit_tiff_stack_keeps_bit_depth(percentile_model, tmp_path):
    stack = np.stack([tifffile.imread(SAMPLES / "fluorescence" / "test" / "nuclei_right.tif")[i:i + 96, :]
                      for i in (0, 80, 160)]).astype(np.uint16) * 50
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    out = tmp_path / "out.tif"
    assert main(["denoise", str(percentile_model), str(tmp_path / "stack.tif"), "-o", str(out)]) == 0
    result = tifffile.imread(out)
    assert result.dtype == np.uint16 and result.shape == stack.shape
    assert result.max() > 255  # not squashed to 8 bits


def test_png_keeps_8_bits(percentile_model, tmp_path):
    from PIL import Image

    image = (tifffile.imread(SAMPLES / "xray" / "test" / "hand.tif")[:80, :90] // 256).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    assert main(["denoise", str(percentile_model), str(tmp_path / "x.png"), "-o", str(tmp_path / "y.png")]) == 0
    with Image.open(tmp_path / "y.png") as result:
        assert result.mode == "L" and result.size == (90, 80)


def test_a_folder_of_files_is_a_batch(percentile_model, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("a.tif", "b.tif"):
        tifffile.imwrite(inputs / name, (np.random.default_rng(1).random((40, 50)) * 4000).astype(np.uint16))
    assert main(["denoise", str(percentile_model), str(inputs), "-o", str(tmp_path / "outs")]) == 0
    assert sorted(p.name for p in (tmp_path / "outs").iterdir()) == ["a.tif", "b.tif"]


def test_overwrite_rules(ct_model, tmp_path, capsys):
    source = SAMPLES / "ct" / "test" / "chest_small.nii.gz"
    copy = tmp_path / "chest.nii.gz"
    shutil.copy(source, copy)
    before = copy.read_bytes()
    assert main(["denoise", str(ct_model), str(copy), "-o", str(copy)]) == 2
    assert "is the input itself" in capsys.readouterr().err
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"keep me")
    assert main(["denoise", str(ct_model), str(copy), "-o", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert main(["denoise", str(ct_model), str(copy), "-o", str(out), "--overwrite"]) == 0
    assert nib.load(str(out)).shape == nib.load(str(copy)).shape
    assert copy.read_bytes() == before


def test_output_inside_a_dicom_input_folder_is_refused(series, ct_model, capsys):
    folder, _ = series
    assert main(["denoise", str(ct_model), str(folder), "-o", str(folder / "denoised")]) == 2
    assert "inside the input folder" in capsys.readouterr().err
    assert not (folder / "denoised").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_input_is_one_line_and_writes_nothing(damage, ct_model, tmp_path):
    good = (SAMPLES / "ct" / "test" / "spine.nii.gz").read_bytes()
    content = {"truncated": good[: len(good) // 2], "garbage": b"this is not an image" * 50,
               "empty": b""}[damage]
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(content)
    out = tmp_path / "out.nii.gz"
    result = subprocess.run([sys.executable, "-m", "toolbox", "denoise", str(ct_model), str(bad), "-o", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"Error: {bad}")
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    assert bad.read_bytes() == content


def test_truncated_dicom_slice_names_the_file(series, ct_model, tmp_path, capsys):
    folder, _ = series
    victim = sorted(folder.iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:3000])
    assert main(["denoise", str(ct_model), str(folder), "-o", str(tmp_path / "out")]) == 2
    assert victim.name in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_dicom_without_pixel_data_is_refused(tmp_path):
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm")
    with pytest.raises(ToolboxError, match="no pixel data"):
        read_volume(tmp_path / "nopixels.dcm")


def test_nan_volume_is_refused(ct_model, tmp_path, capsys):
    data = np.zeros((16, 16, 4), np.float32)
    data[3, 3, 1] = np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "inf.nii.gz"))
    assert main(["denoise", str(ct_model), str(tmp_path / "inf.nii.gz"), "-o", str(tmp_path / "o.nii.gz")]) == 2
    assert "NaN or infinite" in capsys.readouterr().err


def test_3d_model_denoises_a_volume_with_sliding_windows(tmp_path):
    mr = nib.load(str(SAMPLES / "mr3d" / "mni_t1_2mm.nii.gz"))
    data = np.asarray(mr.dataobj)
    path = write_recipe(tmp_path / "r.yaml", tiny_3d_recipe(tmp_path))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    # A region larger than the window (40 x 44 x 36 voxels vs 16^3) in its true position.
    region = nib.Nifti1Image(data[20:60, 30:74, 22:58], mr.affine @ np.array(
        [[1, 0, 0, 20], [0, 1, 0, 30], [0, 0, 1, 22], [0, 0, 0, 1]], dtype=float))
    nib.save(region, str(tmp_path / "region.nii.gz"))
    out = tmp_path / "mr_denoised.nii.gz"
    assert main(["denoise", str(tmp_path / "run"), str(tmp_path / "region.nii.gz"), "-o", str(out)]) == 0
    result = nib.load(str(out))
    assert result.shape == region.shape and np.allclose(result.affine, region.affine)
    assert result.get_data_dtype() == np.uint8


def test_single_dicom_file_gives_a_dicom_file(ct_model, tmp_path):
    from pydicom.data import get_testdata_file

    out = tmp_path / "ct_small_denoised.dcm"
    assert main(["denoise", str(ct_model), get_testdata_file("CT_small.dcm"), "-o", str(out)]) == 0
    assert out.is_file()
    original, result = pydicom.dcmread(get_testdata_file("CT_small.dcm")), pydicom.dcmread(out)
    assert result.pixel_array.shape == original.pixel_array.shape
    assert result.SOPInstanceUID != original.SOPInstanceUID and result.StudyInstanceUID == original.StudyInstanceUID


@pytest.mark.parametrize("dtype,slope,inter", [(np.uint16, 1.0, -1024.0), (np.int16, 0.5, -10.0)])
def test_scaled_nifti_keeps_its_scaling_and_negative_values(denoising_ct_model, tmp_path, dtype, slope, inter):
    """Unsigned CT stored with scl_inter -1024 (as converters write it), and a signed type
    with a fractional slope: the output keeps the stored type and the scaling, and its values
    in HU are the model's output within one stored step."""
    import torch

    from toolbox import load_model as load_trained_model
    from toolbox.infer import denoise_volume

    head = np.asarray(nib.load(str(SAMPLES / "ct" / "train" / "head.nii.gz")).dataobj)[..., 0]
    hu = np.stack([head[224:288, 64:128], head[256:320, 64:128]], axis=-1).astype(np.float32)
    assert hu.min() < -1000 and hu.max() > 1000  # air next to the skull
    stored = np.rint((hu - inter) / slope).astype(dtype)
    image = nib.Nifti1Image(stored, np.eye(4))
    image.header.set_slope_inter(slope, inter)
    source, out = tmp_path / "ct.nii.gz", tmp_path / "out.nii.gz"
    nib.save(image, str(source))
    assert main(["denoise", str(denoising_ct_model), str(source), "-o", str(out)]) == 0
    result = nib.load(str(out))
    assert result.get_data_dtype() == dtype
    assert (float(result.dataobj.slope), float(result.dataobj.inter)) == (slope, inter)
    written = result.get_fdata()
    assert written.min() < -500  # air stays air (was clipped to 0 HU, i.e. water)
    expected = denoise_volume(load_trained_model(denoising_ct_model), read_volume(source),
                              torch.device("cpu"))[0]
    low = inter + slope * np.iinfo(dtype).min
    assert np.abs(written - np.maximum(expected, low)).max() <= slope / 2 + 1e-3


def test_content_decides_when_the_suffix_is_wrong_or_missing(tmp_path):
    """A DICOM file named .png and a NIfTI file without a suffix read as what they are."""
    import shutil

    from toolbox.io import find_format, formats_of

    formats = formats_of(toolbox.plugin_registry())
    dicom_as_png = tmp_path / "slice.png"
    shutil.copy(Path(__file__).parent / "data" / "JPEG-LL.dcm", dicom_as_png)
    nifti_bare = tmp_path / "head"
    shutil.copy(SAMPLES / "ct" / "train" / "head.nii.gz", nifti_bare)
    assert find_format(dicom_as_png, formats).name == "dicom"
    assert find_format(nifti_bare, formats).name == "nifti"
    assert read_volume(nifti_bare).array.shape == read_volume(SAMPLES / "ct" / "train" / "head.nii.gz").array.shape
    with pytest.raises(ToolboxError, match="unknown image type"):
        find_format(Path(__file__), formats)
