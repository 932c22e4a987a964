"""DICOM: files and series folders in (any transfer syntax pydicom's plugins decode), a
derived series out.

- In: slices sorted along the slice normal, rescale applied per slice (HU for CT),
  PixelPaddingValue voxels marked, compressed syntaxes decoded (pylibjpeg with libjpeg,
  openjpeg and rle, and pyjpegls); colour as RGB.
- Out: same geometry, patient and study; new Series and SOP Instance UIDs; ImageType
  DERIVED\\SECONDARY; SeriesDescription / DerivationDescription name the model; a
  SourceImageSequence points at each original slice; the input's rescale kept and values
  clipped to what the stored type holds; written uncompressed, with LossyImageCompression
  kept or set when the input was lossy.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from toolbox.data.volumes import ImageFormat, Volume, check_finite, dtype_range, file_starts_with, to_stored, write_file
from toolbox.errors import ToolboxError
from toolbox.meta import __version__


def _is_dicom(path: Path) -> bool:
    return file_starts_with(path, b"DICM", offset=128)


def dicom_series_in(folder: Path) -> dict[str, list]:
    """SeriesInstanceUID -> headers (no pixels) of the image files in ``folder`` (recursive)."""
    import pydicom

    series: dict[str, list] = defaultdict(list)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if not (_is_dicom(path) or path.suffix.lower() == ".dcm"):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as error:  # noqa: BLE001 - report which file is broken
            raise ToolboxError(f"{path}: not a readable DICOM file ({error})") from error
        if "Rows" not in ds:
            sop_class = ds.get("SOPClassUID") or getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", None)
            if sop_class is not None and "Image Storage" in getattr(sop_class, "name", ""):
                raise ToolboxError(f"{path}: an image file without its image attributes (truncated?)")
            continue  # DICOMDIR, structured reports, presentation states: not images
        ds.filename = str(path)
        series[str(ds.get("SeriesInstanceUID", "(no SeriesInstanceUID)"))].append(ds)
    return dict(series)


def _slice_position(ds) -> float:
    """Position along the slice normal (from ImageOrientationPatient), not the file name."""
    orientation = ds.get("ImageOrientationPatient")
    position = ds.get("ImagePositionPatient")
    if orientation is not None and position is not None:
        row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
        return float(np.dot(np.cross(row, col), np.array(position, float)))
    return float(ds.get("InstanceNumber", 0) or 0)


def _stored_dtype(ds) -> np.dtype:
    bits = int(ds.get("BitsAllocated", 16))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    return np.dtype(f"{'i' if signed else 'u'}{max(bits, 8) // 8}")


def _dicom_rescale(ds) -> tuple[float, float]:
    return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)


# Transfer syntaxes whose compression loses nothing (uncompressed ones are not compressed).
_LOSSLESS_SYNTAXES = {
    "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",  # JPEG lossless (process 14, SV1)
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.92",  # JPEG 2000 lossless only
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",  # HTJ2K lossless
    "1.2.840.10008.1.2.5",  # RLE lossless
}
_LOSSY_METHODS = {"1.2.840.10008.1.2.4.5": "ISO_10918_1", "1.2.840.10008.1.2.4.8": "ISO_14495_1",
                  "1.2.840.10008.1.2.4.9": "ISO_15444_1", "1.2.840.10008.1.2.4.20": "ISO_15444_15"}


def _note_lossy_source(ds) -> None:
    """A derived image of a lossy-compressed one must say so (DICOM PS3.3 C.7.6.1.1.5):
    LossyImageCompression 01 with its method and ratio, kept in the header we write back."""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if not syntax.startswith("1.2.840.10008.1.2.4") or syntax in _LOSSLESS_SYNTAXES:
        return
    if str(ds.get("LossyImageCompression", "")) == "01" and "LossyImageCompressionRatio" in ds:
        return
    ds.LossyImageCompression = "01"
    method = next((m for prefix, m in _LOSSY_METHODS.items() if syntax.startswith(prefix)), None)
    if method and "LossyImageCompressionMethod" not in ds:
        ds.LossyImageCompressionMethod = method
    if "LossyImageCompressionRatio" not in ds and "PixelData" in ds:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        raw = (int(ds.Rows) * int(ds.Columns) * frames * int(ds.get("SamplesPerPixel", 1))
               * int(ds.get("BitsAllocated", 16)) // 8)
        ds.LossyImageCompressionRatio = f"{raw / max(len(ds.PixelData), 1):.2f}"[:16]


def _dicom_pixels(ds, path: Path) -> np.ndarray:
    """Decoded pixels (compressed syntaxes through pydicom's plugins: pylibjpeg with libjpeg,
    openjpeg and rle, and pyjpegls); colour images come back as RGB."""
    try:
        pixels = ds.pixel_array
    except Exception as error:  # noqa: BLE001 - missing codec, truncated data, no pixel data
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ToolboxError(f"{path}: cannot decode the pixel data ({reason[:200]})") from error
    _note_lossy_source(ds)
    return pixels


def _padding_mask(ds, stored: np.ndarray) -> np.ndarray | None:
    """Voxels whose stored value is the PixelPaddingValue (up to PixelPaddingRangeLimit)."""
    value = ds.get("PixelPaddingValue")
    if value is None or int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return None
    limit = ds.get("PixelPaddingRangeLimit")
    if limit is None:
        return stored == float(value)
    low, high = sorted((float(value), float(limit)))
    return (stored >= low) & (stored <= high)


def _read_file(path: Path) -> tuple[list, list]:
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as error:  # noqa: BLE001
        raise ToolboxError(f"{path}: not a readable DICOM file ({error})") from error
    if "PixelData" not in ds:
        raise ToolboxError(f"{path}: this DICOM file has no pixel data (not an image)")
    ds.filename = str(path)
    return [ds], [_dicom_pixels(ds, path)]


def _read_series(path: Path, series: str | None) -> tuple[list, list]:
    """The headers and pixels of one series in a folder, slices sorted along the normal."""
    import pydicom

    found = dicom_series_in(path)
    if not found:
        raise ToolboxError(f"{path}: no DICOM images in this folder")
    if series is None and len(found) > 1:
        listing = "; ".join(
            f"{uid} ({h[0].get('SeriesDescription', '') or h[0].get('Modality', '?')}, {len(h)} files)"
            for uid, h in found.items()
        )
        raise ToolboxError(f"{path}: holds {len(found)} DICOM series; pick one with --series UID: {listing}")
    uid = series or next(iter(found))
    if uid not in found:
        raise ToolboxError(f"{path}: no series {uid}; series here: {', '.join(found)}")
    headers = sorted(found[uid], key=_slice_position)
    positions = [_slice_position(h) for h in headers]
    if len(set(np.round(positions, 4))) != len(positions) and len(headers) > 1:
        raise ToolboxError(
            f"{path}: several slices of series {uid} share a position; "
            "is this a time series? Split it into one folder per time point"
        )
    pixels, datasets = [], []
    for ds in headers:
        full = pydicom.dcmread(ds.filename)
        pixels.append(_dicom_pixels(full, Path(ds.filename)))
        # Keep the whole header for writing back (no third read), not the old pixels.
        del full.PixelData
        full.filename = ds.filename
        datasets.append(full)
    return datasets, pixels


def read_dicom(path: Path, series: str | None = None) -> Volume:
    """A DICOM file, or the series in a folder (``series`` picks among several)."""
    headers, pixels = _read_file(path) if path.is_file() else _read_series(path, series)
    first = headers[0]
    frames = int(first.get("NumberOfFrames", 1) or 1)
    samples = int(first.get("SamplesPerPixel", 1) or 1)
    shapes = {p.shape for p in pixels}
    if len(shapes) != 1:
        raise ToolboxError(f"{path}: slices have different sizes {sorted(shapes)}")
    stack = np.stack(pixels).astype(np.float32)  # (slices, [frames,] rows, cols[, samples])
    units = np.empty_like(stack)
    for index, ds in enumerate(headers):  # slope / intercept may differ from slice to slice
        slope, intercept = _dicom_rescale(ds)
        units[index] = stack[index] * slope + intercept

    def arrange(array: np.ndarray) -> np.ndarray:
        # (C, slices, [frames,] rows, cols) -> one volume; a single 2D image stays 2D.
        array = np.moveaxis(array, -1, 0) if samples > 1 else array[None]
        if frames > 1 and len(headers) == 1:
            array = array[:, 0]
        if array.shape[1] == 1 and array.ndim == 4:
            array = array[:, 0]
        return array

    units = arrange(units)
    padding = _padding_mask(first, stack)
    padding = arrange(padding) if padding is not None else None
    dtype = _stored_dtype(first)
    slope, intercept = _dicom_rescale(first)
    low, high = dtype_range(dtype)
    bits = int(first.get("BitsStored", dtype.itemsize * 8))
    if np.issubdtype(dtype, np.integer):
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if dtype.kind == "i" else (0, 2**bits - 1)
    value_range = tuple(sorted((low * slope + intercept, high * slope + intercept)))
    check_finite(units, path)
    return Volume(
        array=np.ascontiguousarray(units, dtype=np.float32), path=path, format="dicom",
        stored_dtype=dtype, value_range=value_range,
        slice_axis=0 if units.ndim == 4 else None,
        meta={"headers": headers, "multiframe": frames > 1},
        name=path.name, padding=padding, spacing=_spacing(headers, units.ndim - 1),
    )


def _spacing(headers: list, dims: int) -> tuple | None:
    """mm per axis of the array: (rows, columns), after the slice gap for a volume."""
    first = headers[0]
    if "PixelSpacing" not in first:
        return None
    in_plane = tuple(float(v) for v in first.PixelSpacing)
    if dims == 2:
        return in_plane
    positions = [_slice_position(h) for h in headers]
    gap = float(np.median(np.abs(np.diff(positions)))) if len(positions) > 1 else 0.0
    gap = gap or float(first.get("SpacingBetweenSlices", 0) or first.get("SliceThickness", 0) or 1.0)
    return (gap, *in_plane)


def _derived_image_type(value) -> list[str]:
    values = list(value) if value is not None else []
    values = [str(v) for v in values]
    rest = values[2:] if len(values) > 2 else []
    return ["DERIVED", "SECONDARY", *rest]


def write_dicom(volume: Volume, units: np.ndarray, output: Path, description: str, overwrite: bool) -> None:
    """A derived series (or file): the input's headers, new UIDs, DERIVED image type."""
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
                write_file(output, overwrite, lambda path: ds.save_as(path, enforce_file_format=True))
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


class DicomFormat(ImageFormat):
    """DICOM files and series folders (pydicom)."""

    suffixes = (".dcm",)
    folders = True  # a folder of DICOM files is one image

    def sniff(self, path: Path) -> bool:
        if path.is_dir():
            return any(p.is_file() and (p.suffix.lower() == ".dcm" or _is_dicom(p)) for p in path.iterdir()
                       if not p.name.startswith("."))
        return _is_dicom(path)

    def read(self, path, series=None, channels=None):
        return read_dicom(path, series)

    def write(self, volume, units, output, description, overwrite):
        write_dicom(volume, units, output, description, overwrite)

    def rescaled(self, volume, factors):
        from toolbox.formats.dicom_geometry import rescaled_dicom

        return rescaled_dicom(volume, factors)
