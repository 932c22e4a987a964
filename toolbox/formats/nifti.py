"""NIfTI-1/2 (nibabel): the affine, header, units and stored scaling kept on the way back."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from toolbox.data.volumes import (ImageFormat, Volume, check_finite, dtype_range, file_starts_with,
                                  first_centre_shift, rescaled_template, to_stored, write_file)
from toolbox.errors import ToolboxError


def read_nifti(path: Path, channels: int | None = None) -> Volume:
    import nibabel as nib

    try:
        image = _load(path)
        data = np.asarray(image.get_fdata(dtype=np.float32))
    except Exception as error:  # noqa: BLE001 - truncated gzip, bad header, ...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ToolboxError(f"{path}: cannot read this NIfTI file ({reason[:200]})") from error
    check_finite(data, path)
    if data.ndim == 4 or data.ndim == 5:
        # A 4th axis is channels (or time); a denoiser of C channels takes C of them.
        extra = data.shape[3:]
        if channels is not None and int(np.prod(extra)) != channels:
            raise ToolboxError(
                f"{path}: is 4D with {int(np.prod(extra))} volumes along the 4th axis; the model "
                f"takes {channels} channel(s). Split the series into 3D files first"
            )
        data = np.moveaxis(data.reshape(*data.shape[:3], -1), -1, 0)
    elif data.ndim in (2, 3):
        data = data[None]
    else:
        raise ToolboxError(f"{path}: has {data.ndim} axes; expected 2D, 3D or 4D")
    dtype = image.get_data_dtype()
    # nibabel moves scl_slope / scl_inter from the header to the data proxy on load (the
    # header then says "no scaling"): read them there, or a uint16 CT with intercept -1024
    # would be written back without it.
    slope = float(getattr(image.dataobj, "slope", 1.0))
    inter = float(getattr(image.dataobj, "inter", 0.0))
    low, high = dtype_range(dtype)
    if np.issubdtype(dtype, np.integer):
        low, high = sorted((low * slope + inter, high * slope + inter))
    return Volume(
        array=np.ascontiguousarray(data), path=path, format="nifti", stored_dtype=np.dtype(dtype),
        value_range=(low, high), slice_axis=2 if data.ndim == 4 else None,
        meta={"affine": image.affine, "header": image.header, "scaling": (slope, inter)},
        name=path.name, spacing=tuple(float(z) for z in image.header.get_zooms()[: data.ndim - 1]),
    )


def write_nifti(volume: Volume, units: np.ndarray, output: Path, description: str, overwrite: bool) -> None:
    import nibabel as nib

    header = volume.meta["header"].copy()
    data = units[0] if units.shape[0] == 1 else np.moveaxis(units, 0, -1)
    original_shape = tuple(volume.meta["header"].get_data_shape())
    data = data.reshape(original_shape)
    dtype = volume.stored_dtype
    if np.issubdtype(dtype, np.integer):
        # Stored integers with the input's own slope and intercept: with both set in the
        # header, nibabel writes the integers as given instead of choosing a scaling.
        slope, inter = volume.meta.get("scaling", (1.0, 0.0))
        stored = to_stored(volume, data, slope, inter)
        image = nib.Nifti1Image(stored, volume.meta["affine"], header=header)
        image.header.set_slope_inter(slope, inter)
    else:  # real units as floats, unscaled
        header.set_data_dtype(dtype)
        image = nib.Nifti1Image(data.astype(dtype), volume.meta["affine"], header=header)
        image.header.set_slope_inter(1.0, 0.0)
    image.header["descrip"] = description[:79].encode()
    write_file(output, overwrite, lambda path: nib.save(image, str(path)))


def _is_gzip(path: Path) -> bool:
    return file_starts_with(path, b"\x1f\x8b")


def _load(path: Path):
    """nibabel picks the reader by the name; a file whose name does not say NIfTI (found by
    its content) is read from its bytes."""
    import nibabel as nib

    if path.name.lower().endswith((".nii", ".nii.gz")):
        return nib.load(str(path))
    raw = gzip.decompress(path.read_bytes()) if _is_gzip(path) else path.read_bytes()
    image_class = nib.Nifti2Image if _header_size_of(raw[:4]) == 540 else nib.Nifti1Image
    return image_class.from_bytes(raw)


def _header_size_of(start: bytes) -> int | None:
    if len(start) < 4:
        return None
    return next((v for v in (int.from_bytes(start, "little"), int.from_bytes(start, "big")) if v in (348, 540)), None)


def _header_size(path: Path) -> int | None:
    """sizeof_hdr of a (possibly gzipped) NIfTI file: 348 (NIfTI-1) or 540 (NIfTI-2)."""
    try:
        opener = gzip.open if _is_gzip(path) else open
        with opener(path, "rb") as handle:
            start = handle.read(4)
    except (OSError, EOFError, zlib.error):  # unreadable or a damaged gzip: not this format
        return None
    return _header_size_of(start)


class NiftiFormat(ImageFormat):
    """NIfTI files, gzipped or not (nibabel)."""

    suffixes = (".nii.gz", ".nii")

    def sniff(self, path: Path) -> bool:
        return path.is_file() and _header_size(path) is not None

    def read(self, path, series=None, channels=None):
        return read_nifti(path, channels)

    def write(self, volume, units, output, description, overwrite):
        write_nifti(volume, units, output, description, overwrite)

    def rescaled(self, volume, factors):
        return rescaled_nifti(volume, factors)


def rescaled_nifti(volume: Volume, factors) -> Volume:
    """The template of a finer grid: the affine maps each new voxel index to the physical
    point of its centre (NIfTI voxel axes are the array's spatial axes)."""
    factors = list(factors) + [1] * (3 - len(factors))
    grid = np.eye(4)
    for axis, factor in enumerate(factors):
        grid[axis, axis] = 1.0 / factor
        grid[axis, 3] = first_centre_shift(factor)
    affine = volume.meta["affine"] @ grid
    header = volume.meta["header"].copy()
    shape = list(header.get_data_shape())
    header.set_data_shape([s * f for s, f in zip(shape, factors)] + shape[len(factors):])
    header.set_sform(affine)
    header.set_qform(affine)
    return rescaled_template(volume, factors[: volume.array.ndim - 1], affine=affine, header=header)
