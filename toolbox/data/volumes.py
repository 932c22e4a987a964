"""Read one input for ``toolbox denoise`` / ``evaluate`` with everything needed to write it back.

Training reads through MONAI's readers (``toolbox.data.readers``).  Inputs that must come
back as the same kind of file with the same geometry are read here with the format's own
library (pydicom, nibabel, tifffile, Pillow, ITK), keeping the per-slice DICOM headers, the
NIfTI header and affine, the TIFF axes and the stored dtype.

A ``Volume`` holds the image in the input's physical units (Hounsfield units for CT: the
DICOM rescale is applied) as float32 ``(C, *spatial)``; ``slice_axis`` names the spatial axis
along which a 2D model is applied slice by slice.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolbox.data.readers import IMAGE_SUFFIXES as VOLUME_SUFFIXES
from toolbox.data.readers import suffix_of
from toolbox.errors import ToolboxError



@dataclass
class Volume:
    array: np.ndarray  # float32 (C, *spatial), physical units
    path: Path  # the file, or the DICOM folder
    format: str  # dicom | nifti | tiff | png | itk
    stored_dtype: np.dtype  # dtype of the stored values (written back the same)
    value_range: tuple[float, float]  # what the stored type can hold, in physical units
    slice_axis: int | None = None  # spatial axis of the slices (3D inputs)
    meta: dict = field(default_factory=dict)
    name: str = ""  # short name for tables and output files
    padding: np.ndarray | None = None  # True where the file marks a voxel as padding, not image

    def image_values(self) -> np.ndarray:
        """``array`` with padding voxels (DICOM PixelPaddingValue: the scanner's fill outside
        the field of view, -2000 or -3024 HU) set to the darkest real value, so that a
        network sees no cliff that is not in the image; ``restore_padding`` puts them back."""
        if self.padding is None or not self.padding.any() or self.padding.all():
            return self.array
        return np.where(self.padding, self.array[~self.padding].min(), self.array).astype(np.float32)

    def restore_padding(self, units: np.ndarray) -> np.ndarray:
        """Padding voxels exactly as they came in (viewers recognise padding by its value)."""
        if self.padding is None or not self.padding.any():
            return units
        return np.where(self.padding, self.array, units).astype(np.float32)

    @property
    def spatial_dims(self) -> int:
        return self.array.ndim - 1


def squeeze_spatial(array: np.ndarray, slice_axis: int | None, min_axes: int = 2):
    """Drop singleton spatial axes (a 2D slice stored as (X, Y, 1)), keeping ``min_axes``.

    Returns the squeezed array and where ``slice_axis`` went (None if it was dropped).
    """
    spatial = list(range(1, array.ndim))
    keep = [a for a in spatial if array.shape[a] > 1]
    for axis in spatial:  # too few left: keep singletons from the front
        if len(keep) >= min_axes:
            break
        if axis not in keep:
            keep.append(axis)
    keep.sort()
    squeezed = array.reshape([array.shape[0]] + [array.shape[a] for a in keep])
    if slice_axis is not None:
        slice_axis = keep.index(slice_axis + 1) if slice_axis + 1 in keep else None
    return squeezed, slice_axis


def _dtype_range(dtype: np.dtype) -> tuple[float, float]:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return -np.inf, np.inf


def _check_finite(array: np.ndarray, path: Path) -> None:
    if array.size == 0 or 0 in array.shape:
        raise ToolboxError(f"{path}: the image is empty (shape {array.shape})")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ToolboxError(f"{path}: {bad} voxel(s) are NaN or infinite; fix or mask them first")


# -- DICOM ---------------------------------------------------------------------------------
def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


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


def read_dicom(path: Path, series: str | None = None) -> Volume:
    import pydicom

    if path.is_file():
        try:
            ds = pydicom.dcmread(path)
        except Exception as error:  # noqa: BLE001
            raise ToolboxError(f"{path}: not a readable DICOM file ({error})") from error
        if "PixelData" not in ds:
            raise ToolboxError(f"{path}: this DICOM file has no pixel data (not an image)")
        ds.filename = str(path)
        headers = [ds]
        pixels = [_dicom_pixels(ds, path)]
    else:
        found = dicom_series_in(path)
        if not found:
            raise ToolboxError(f"{path}: no DICOM images in this folder")
        if series is None and len(found) > 1:
            listing = "; ".join(
                f"{uid} ({h[0].get('SeriesDescription', '') or h[0].get('Modality', '?')}, {len(h)} files)"
                for uid, h in found.items()
            )
            raise ToolboxError(
                f"{path}: holds {len(found)} DICOM series; pick one with --series UID: {listing}"
            )
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
        headers = datasets
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
    low, high = _dtype_range(dtype)
    bits = int(first.get("BitsStored", dtype.itemsize * 8))
    if np.issubdtype(dtype, np.integer):
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if dtype.kind == "i" else (0, 2**bits - 1)
    value_range = tuple(sorted((low * slope + intercept, high * slope + intercept)))
    _check_finite(units, path)
    return Volume(
        array=np.ascontiguousarray(units, dtype=np.float32), path=path, format="dicom",
        stored_dtype=dtype, value_range=value_range,
        slice_axis=0 if units.ndim == 4 else None,
        meta={"headers": headers, "multiframe": frames > 1},
        name=path.name, padding=padding,
    )


# -- NIfTI ---------------------------------------------------------------------------------
def read_nifti(path: Path, channels: int | None = None) -> Volume:
    import nibabel as nib

    try:
        image = nib.load(str(path))
        data = np.asarray(image.get_fdata(dtype=np.float32))
    except Exception as error:  # noqa: BLE001 - truncated gzip, bad header, ...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ToolboxError(f"{path}: cannot read this NIfTI file ({reason[:200]})") from error
    _check_finite(data, path)
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
    low, high = _dtype_range(dtype)
    if np.issubdtype(dtype, np.integer):
        low, high = sorted((low * slope + inter, high * slope + inter))
    return Volume(
        array=np.ascontiguousarray(data), path=path, format="nifti", stored_dtype=np.dtype(dtype),
        value_range=(low, high), slice_axis=2 if data.ndim == 4 else None,
        meta={"affine": image.affine, "header": image.header, "scaling": (slope, inter)},
        name=path.name,
    )


# -- TIFF / PNG ----------------------------------------------------------------------------
def read_tiff(path: Path) -> Volume:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data = series.asarray()
            axes = series.axes
    except Exception as error:  # noqa: BLE001
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ToolboxError(f"{path}: cannot read this TIFF file ({reason[:200]})") from error
    dtype = data.dtype
    # Channels (S = samples per pixel, C) first; everything else before Y, X is a slice axis.
    channel_axes = [i for i, a in enumerate(axes) if a in "SC"]
    if len(channel_axes) > 1:
        raise ToolboxError(f"{path}: TIFF axes {axes} have more than one channel axis")
    if channel_axes:
        data = np.moveaxis(data, channel_axes[0], 0)
        axes = axes[channel_axes[0]] + axes.replace(axes[channel_axes[0]], "")
    else:
        data = data[None]
        axes = "C" + axes
    if data.ndim > 4:
        raise ToolboxError(f"{path}: TIFF axes {series.axes}: at most one stack axis besides Y and X")
    array = data.astype(np.float32)
    _check_finite(array, path)
    return Volume(
        array=array, path=path, format="tiff", stored_dtype=dtype, value_range=_dtype_range(dtype),
        slice_axis=0 if array.ndim == 4 else None, meta={"axes": series.axes}, name=path.name,
    )


def read_png(path: Path) -> Volume:
    from PIL import Image

    try:
        with Image.open(path) as image:
            mode = image.mode
            data = np.asarray(image)
    except Exception as error:  # noqa: BLE001
        raise ToolboxError(f"{path}: cannot read this PNG file ({error})") from error
    if data.ndim == 3:
        data = np.moveaxis(data, -1, 0)
    else:
        data = data[None]
    array = data.astype(np.float32)
    _check_finite(array, path)
    dtype = np.dtype(np.uint16) if data.dtype.itemsize == 2 or mode.startswith("I") else np.dtype(np.uint8)
    return Volume(array=array, path=path, format="png", stored_dtype=dtype,
                  value_range=_dtype_range(dtype), meta={"mode": mode}, name=path.name)


def read_itk(path: Path) -> Volume:
    import itk

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = itk.imread(str(path))
    except Exception as error:  # noqa: BLE001
        raise ToolboxError(f"{path}: cannot read this image with ITK ({error})") from error
    data = itk.array_from_image(image)  # (z, y, x) or (y, x) [+ components]
    components = image.GetNumberOfComponentsPerPixel()
    data = np.moveaxis(data, -1, 0) if components > 1 else data[None]
    array = data.astype(np.float32)
    _check_finite(array, path)
    return Volume(
        array=array, path=path, format="itk", stored_dtype=data.dtype,
        value_range=_dtype_range(data.dtype), slice_axis=0 if array.ndim == 4 else None,
        meta={"spacing": tuple(image.GetSpacing()), "origin": tuple(image.GetOrigin()),
              "direction": np.array(image.GetDirection())},
        name=path.name,
    )


def read_volume(path, series: str | None = None, channels: int | None = None) -> Volume:
    """Read a file, or a folder holding one DICOM series (``series`` picks among several)."""
    path = Path(path)
    if not path.exists():
        raise ToolboxError(f"{path}: no such file or folder")
    if path.is_dir():
        return read_dicom(path, series)
    if path.stat().st_size == 0:
        raise ToolboxError(f"{path}: the file is empty (0 bytes)")
    suffix = suffix_of(path)
    if suffix in (".nii", ".nii.gz"):
        return read_nifti(path, channels)
    if suffix in (".tif", ".tiff"):
        return read_tiff(path)
    if suffix == ".png":
        return read_png(path)
    if suffix == ".dcm" or _is_dicom(path):
        return read_dicom(path, series)
    if suffix in (".nrrd", ".mha", ".mhd"):
        return read_itk(path)
    raise ToolboxError(
        f"{path}: unknown image type '{suffix}'; expected one of {', '.join(VOLUME_SUFFIXES)} "
        "or a DICOM folder"
    )


def expand_inputs(paths, depth: int = 3) -> list[Path]:
    """Inputs of a batch: files as given; a folder with DICOM files is one input (a series);
    a folder of image files gives each file; a folder of folders gives each sub-folder
    (``depth`` levels down, symbolic links to folders not followed)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    inputs: list[Path] = []
    for entry in map(Path, paths):
        if not entry.exists():
            raise ToolboxError(f"{entry}: no such file or folder")
        if entry.is_file():
            inputs.append(entry)
            continue
        files = sorted(p for p in entry.iterdir() if p.is_file() and not p.name.startswith("."))
        folders = sorted(p for p in entry.iterdir()
                         if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
        if any(_is_dicom(p) or p.suffix.lower() == ".dcm" for p in files):
            inputs.append(entry)
        elif any(suffix_of(p) in VOLUME_SUFFIXES for p in files):
            inputs.extend(p for p in files if suffix_of(p) in VOLUME_SUFFIXES)
        elif folders and depth > 0:
            inputs.extend(expand_inputs(folders, depth - 1))
        else:
            raise ToolboxError(
                f"{entry}: no images ({', '.join(VOLUME_SUFFIXES)}) or DICOM files here"
            )
    return inputs
