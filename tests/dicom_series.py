"""Build a real-looking multi-slice CT DICOM series for the tests.

The header is pydicom's real CT test file (CT_small.dcm, NEMA WG04); the pixels are 128x128
crops of the bundled real CT slices, stored as uint16 with RescaleIntercept -1024 (as many
scanners do); slices 2.5 mm apart along a tilted axis, written under shuffled file names so
that readers must sort by position.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def ct_slices(count: int, size: int = 128) -> np.ndarray:
    """``count`` real CT crops in HU, shape (count, size, size)."""
    sources = [np.asarray(nib.load(str(p)).dataobj)[..., 0].T
               for p in sorted((SAMPLES / "ct").rglob("*.nii.gz")) if "chest_small" not in p.name]
    crops = []
    for index in range(count):
        image = sources[index % len(sources)]
        top = 150 + 17 * (index // len(sources))
        crops.append(image[top:top + size, 180:180 + size])
    return np.stack(crops).astype(np.float32)


def write_ct_series(folder: Path, hu: np.ndarray, spacing: float = 2.5, series_uid=None,
                    description: str = "test series") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series_uid = series_uid or generate_uid()
    # A slightly tilted acquisition: rows along x, columns along y rotated about x.
    angle = np.deg2rad(10)
    row, col = np.array([1.0, 0, 0]), np.array([0, np.cos(angle), np.sin(angle)])
    normal = np.cross(row, col)
    origin = np.array([-42.3, -61.2, -100.0])
    order = np.random.default_rng(7).permutation(len(hu))
    paths = []
    for index, slice_hu in enumerate(hu):
        ds = template.copy()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = description
        ds.InstanceNumber = index + 1
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *col)]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in origin + index * spacing * normal]
        ds.SliceThickness = spacing
        ds.SpacingBetweenSlices = spacing
        ds.PixelSpacing = [0.7, 0.7]
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        stored = np.clip(np.rint(slice_hu + 1024), 0, 4095).astype(np.uint16)
        ds.set_pixel_data(stored, photometric_interpretation="MONOCHROME2", bits_stored=12,
                          generate_instance_uid=False)
        path = folder / f"slice_{order[index]:03d}.dcm"  # names do not follow positions
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
