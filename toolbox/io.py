"""Write a denoised volume back as the same kind of file as its input, geometry kept.

- DICOM in -> DICOM series out: same geometry, patient and study; new Series and SOP
  Instance UIDs; ImageType DERIVED\\SECONDARY; SeriesDescription / DerivationDescription name
  the model; a SourceImageSequence points at each original slice; the input's rescale is
  kept and the values are clipped to what the stored type holds.  Compressed inputs (JPEG,
  JPEG-LS, JPEG 2000, RLE) are written uncompressed, with LossyImageCompression kept or
  set when the input was lossy.
- NIfTI keeps its affine, header and units; TIFF and PNG keep their bit depth; ITK formats
  keep spacing, origin and direction.
- Every output is written under a temporary name and renamed once complete; an output that
  would overwrite an input is refused; an existing output needs ``overwrite=True``.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from toolbox import __version__
from toolbox.checkpoint import atomic_write
from toolbox.data.readers import suffix_of
from toolbox.data.volumes import Volume
from toolbox.errors import ToolboxError


def check_output(inputs: list[Path], output: Path, overwrite: bool) -> None:
    """Refuse outputs that are inputs, lie inside a DICOM input folder, or exist already."""
    resolved = output.resolve()
    for source in inputs:
        source = source.resolve()
        if resolved == source:
            raise ToolboxError(f"{output}: is the input itself; choose another output path")
        if source.is_dir() and (resolved == source or source in resolved.parents):
            raise ToolboxError(
                f"{output}: lies inside the input folder {source}; choose an output outside it"
            )
        if resolved in source.parents:  # replacing the output folder would delete the input
            raise ToolboxError(f"{output}: holds the input {source}; choose an output outside it")
    if output.exists() and not overwrite:
        raise ToolboxError(f"{output}: already exists; pass --overwrite to replace it")


def to_stored(volume: Volume, units: np.ndarray, slope: float = 1.0, intercept: float = 0.0) -> np.ndarray:
    """Physical units -> stored values of the input's dtype (rounded and clipped)."""
    low, high = volume.value_range
    units = np.clip(units, low, high)
    stored = (units - intercept) / slope
    dtype = volume.stored_dtype
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        stored = np.clip(np.rint(stored), info.min, info.max)
    return stored.astype(dtype)


def write_volume(volume: Volume, units: np.ndarray, output: Path, description: str,
                 overwrite: bool = False) -> Path:
    """Write ``units`` (float, same shape as ``volume.array``) like ``volume`` to ``output``."""
    if units.shape != volume.array.shape:
        raise ValueError(f"output shape {units.shape} differs from input {volume.array.shape}")
    output = Path(output)
    writer = {"dicom": _write_dicom, "nifti": _write_nifti, "tiff": _write_tiff,
              "png": _write_png, "itk": _write_itk}[volume.format]
    if output.exists() and overwrite and volume.format != "dicom" and output.is_dir():
        raise ToolboxError(f"{output}: is a folder; a {volume.format} input gives a file")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ToolboxError(f"{output.parent}: cannot create the output folder ({error.strerror})") from error
    if not os.access(output.parent, os.W_OK):
        raise ToolboxError(f"{output.parent}: the output folder is not writable")
    writer(volume, units, output, description, overwrite)
    return output


# -- DICOM -----------------------------------------------------------------------------------
def _derived_image_type(value) -> list[str]:
    values = list(value) if value is not None else []
    values = [str(v) for v in values]
    rest = values[2:] if len(values) > 2 else []
    return ["DERIVED", "SECONDARY", *rest]


def _write_dicom(volume: Volume, units: np.ndarray, output: Path, description: str, overwrite: bool) -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    headers = volume.meta["headers"]
    series_uid = generate_uid()
    channels_last = volume.array.shape[0] > 1
    # Back to (slices, [frames,] rows, cols[, samples]) as read.
    data = np.moveaxis(units, 0, -1) if channels_last else units[0]
    if len(headers) == 1:
        data = data[None]
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        for index, source in enumerate(headers):
            ds = copy.deepcopy(source)  # the input's full header, as read
            slope = float(ds.get("RescaleSlope", 1) or 1)
            intercept = float(ds.get("RescaleIntercept", 0) or 0)
            stored = to_stored(volume, data[index], slope, intercept)
            bits = int(ds.get("BitsStored", stored.dtype.itemsize * 8))
            if np.issubdtype(stored.dtype, np.integer):  # what BitsStored can hold
                low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if stored.dtype.kind == "i" else (0, 2**bits - 1)
                stored = np.clip(stored, low, high).astype(stored.dtype)
            original_uid = ds.SOPInstanceUID
            # Written uncompressed (Explicit VR Little Endian) whatever the input's syntax:
            # re-encoding a lossy input would add a second generation of artefacts to the
            # denoised image, and every DICOM reader takes uncompressed data.  set_pixel_data
            # also fixes the pixel module (rows, columns, bits, frames) to match the array;
            # colour arrives decoded to RGB, so it is written as RGB.
            photometric = "RGB" if int(ds.get("SamplesPerPixel", 1)) == 3 else ds.PhotometricInterpretation
            if "PixelData" in ds:
                del ds.PixelData  # the input's (possibly compressed) pixels
            ds.set_pixel_data(stored, photometric_interpretation=photometric,
                              bits_stored=bits, generate_instance_uid=False)
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.ImageType = _derived_image_type(ds.get("ImageType"))
            base = str(ds.get("SeriesDescription", "") or "").strip()
            ds.SeriesDescription = (f"{base} {description}".strip())[:64]
            ds.DerivationDescription = f"Denoised with toolbox {__version__}: {description}"[:1024]
            if str(ds.get("SeriesNumber", "") or "").strip():
                ds.SeriesNumber = int(ds.SeriesNumber) + 1000
            reference = Dataset()
            reference.ReferencedSOPClassUID = ds.SOPClassUID
            reference.ReferencedSOPInstanceUID = original_uid
            ds.SourceImageSequence = Sequence([reference])
            for tag in ("SmallestImagePixelValue", "LargestImagePixelValue"):
                if tag in ds:  # no longer true of the new pixels
                    del ds[tag]
            if volume.path.is_file():  # one file in, one file out
                _write_file(output, overwrite, lambda path: ds.save_as(path, enforce_file_format=True))
                shutil.rmtree(tmp_dir, ignore_errors=True)
                return
            ds.save_as(tmp_dir / Path(source.filename).name, enforce_file_format=True)
        _replace_folder(tmp_dir, output, overwrite)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def _replace_folder(tmp_dir: Path, output: Path, overwrite: bool) -> None:
    if output.exists():
        if not overwrite:
            raise ToolboxError(f"{output}: already exists; pass --overwrite to replace it")
        old = output.with_name(f".{output.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(output, old)
        os.replace(tmp_dir, output)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    else:
        os.replace(tmp_dir, output)


# -- NIfTI / TIFF / PNG / ITK ----------------------------------------------------------------
def _write_file(output: Path, overwrite: bool, write) -> None:
    if output.exists() and not overwrite:
        raise ToolboxError(f"{output}: already exists; pass --overwrite to replace it")
    suffix = suffix_of(output)

    def write_with_suffix(tmp: Path) -> None:
        # Writers pick the format (and gzip) from the suffix: give the temp file the same one.
        named = tmp.with_name(tmp.name + suffix)
        try:
            write(named)
            os.replace(named, tmp)
        finally:
            named.unlink(missing_ok=True)

    atomic_write(output, write_with_suffix)


def _write_nifti(volume: Volume, units: np.ndarray, output: Path, description: str, overwrite: bool) -> None:
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
    _write_file(output, overwrite, lambda path: nib.save(image, str(path)))


def _write_tiff(volume: Volume, units: np.ndarray, output: Path, description: str, overwrite: bool) -> None:
    import tifffile

    stored = to_stored(volume, units)
    axes = volume.meta["axes"]
    channel = next((i for i, a in enumerate(axes) if a in "SC"), None)
    data = stored[0] if channel is None else np.moveaxis(stored, 0, channel)
    photometric = "rgb" if channel is not None and "S" in axes and data.shape[channel] in (3, 4) else "minisblack"
    _write_file(output, overwrite, lambda path: tifffile.imwrite(
        path, data, photometric=photometric, description=description, metadata={"axes": axes}))


def _write_png(volume: Volume, units: np.ndarray, output: Path, description: str, overwrite: bool) -> None:
    from PIL import Image, PngImagePlugin

    stored = to_stored(volume, units)
    data = stored[0] if stored.shape[0] == 1 else np.moveaxis(stored, 0, -1)
    info = PngImagePlugin.PngInfo()
    info.add_text("Description", description)
    _write_file(output, overwrite, lambda path: Image.fromarray(data).save(path, pnginfo=info))


def _write_itk(volume: Volume, units: np.ndarray, output: Path, description: str, overwrite: bool) -> None:
    import itk

    stored = to_stored(volume, units)
    data = stored[0] if stored.shape[0] == 1 else np.moveaxis(stored, 0, -1)
    image = itk.image_from_array(np.ascontiguousarray(data), is_vector=stored.shape[0] > 1)
    image.SetSpacing(volume.meta["spacing"])
    image.SetOrigin(volume.meta["origin"])
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(volume.meta["direction"])))
    _write_file(output, overwrite, lambda path: itk.imwrite(image, str(path)))


