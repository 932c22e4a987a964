"""Compressed DICOM in (JPEG baseline, extended and lossless, JPEG-LS, JPEG 2000, RLE), a
readable uncompressed derived image or series out; and no bundled or test source file is one
of those reserved for independent evaluation."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from conftest import ROOT, SAMPLES
from toolbox.cli import main

DATA = Path(__file__).resolve().parent / "data"
RESERVED = ROOT.parent / "shared" / "reserved-sources.sha256"

# (file, transfer syntax UID, lossy): each common syntax once; pydicom ships all but two.
COMPRESSED = [
    ("jpeg_baseline", "1.2.840.10008.1.2.4.50", True),  # made below from a real CT slice
    ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51", True),
    ("JPEG-LL.dcm", "1.2.840.10008.1.2.4.70", False),  # tests/data, from pydicom-data
    ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80", False),
    ("JPEGLSNearLossless_16.dcm", "1.2.840.10008.1.2.4.81", True),
    ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90", False),
    ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91", True),
    ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5", False),
]


def _jpeg_baseline_ct(path: Path) -> Path:
    """A real CT slice, windowed to 8 bits and stored as JPEG baseline (as PACS exports do)."""
    from PIL import Image

    hu = np.asarray(nib.load(str(SAMPLES / "ct" / "train" / "head.nii.gz")).dataobj)[..., 0].T[128:384, 128:384]
    grey = np.clip((hu + 160) / 400 * 255, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="JPEG", quality=90)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.Rows, ds.Columns = grey.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = 400 / 255, -160
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def _source(name: str, folder: Path) -> Path:
    if name == "jpeg_baseline":
        return _jpeg_baseline_ct(folder / "ct_jpeg_baseline.dcm")
    found = DATA / name if (DATA / name).is_file() else Path(get_testdata_file(name))
    return Path(shutil.copy(found, folder / name))


@pytest.mark.parametrize("name,syntax,lossy", COMPRESSED, ids=[c[0] for c in COMPRESSED])
def test_compressed_dicom_denoises_into_a_readable_uncompressed_file(name, syntax, lossy, percentile_model, tmp_path):
    source = _source(name, tmp_path)
    original = pydicom.dcmread(source)
    assert original.file_meta.TransferSyntaxUID == syntax
    out = tmp_path / "out.dcm"
    assert main(["denoise", str(percentile_model), str(source), "-o", str(out)]) == 0
    result = pydicom.dcmread(out)
    # Written uncompressed (why: README, "Denoise"), same pixel grid, a derived image.
    assert result.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert result.pixel_array.shape == original.pixel_array.shape
    assert list(result.ImageType[:2]) == ["DERIVED", "SECONDARY"]
    assert result.SOPInstanceUID != original.SOPInstanceUID
    assert result.get("StudyInstanceUID") == original.get("StudyInstanceUID")
    # An image derived from a lossy-compressed one must say so.
    assert (result.get("LossyImageCompression") == "01") == lossy
    if lossy:
        assert float(result.LossyImageCompressionRatio) > 1
    assert np.isfinite(itk.array_from_image(itk.imread(str(out)))).all()  # another reader agrees


def test_a_compressed_series_gives_a_readable_series(percentile_model, tmp_path):
    """Three JPEG-LS slices of one series (positions 5 mm apart) -> an uncompressed series
    that ITK reads with the same geometry."""
    folder = tmp_path / "series"
    folder.mkdir()
    template = pydicom.dcmread(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    series_uid = generate_uid()
    for index in range(3):
        ds = template.copy()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, 5.0 * index]
        ds.InstanceNumber = index + 1
        ds.save_as(folder / f"im{2 - index}.dcm", enforce_file_format=True)
    out = tmp_path / "denoised"
    assert main(["denoise", str(percentile_model), str(folder), "-o", str(out)]) == 0
    outputs = [pydicom.dcmread(p) for p in sorted(out.iterdir())]
    assert len(outputs) == 3 and len({ds.SeriesInstanceUID for ds in outputs}) == 1
    assert all(ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian for ds in outputs)
    names = itk.GDCMSeriesFileNames.New(Directory=str(out))
    image = itk.imread(names.GetFileNames(names.GetSeriesUIDs()[0]))
    assert tuple(itk.size(image)) == (64, 64, 3)
    assert np.allclose(itk.spacing(image)[2], 5.0)


def _reserved() -> set[str]:
    if not RESERVED.is_file():
        pytest.skip("the shared reserved-sources list is not beside this checkout")
    return {line.split()[0] for line in RESERVED.read_text().splitlines()
            if line.strip() and not line.startswith("#")}


def test_no_bundled_or_test_source_is_reserved_for_independent_evaluation():
    reserved = _reserved()
    manifest = [line.split() for line in (SAMPLES / "SOURCES.sha256").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert len(manifest) >= 9 and not {digest for digest, _ in manifest} & reserved
    files = [p for p in list(SAMPLES.rglob("*")) + list(DATA.rglob("*")) if p.is_file()]
    files += [Path(get_testdata_file(name)) for name, _, _ in COMPRESSED if not (DATA / name).exists()
              and name != "jpeg_baseline"] + [Path(get_testdata_file("CT_small.dcm"))]
    hashes = {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in files}
    assert not set(hashes) & reserved, [str(hashes[h]) for h in set(hashes) & reserved]
