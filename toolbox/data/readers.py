"""Read an image file (or DICOM folder) into a float array ``(C, *spatial)`` with its metadata.

MONAI's readers do the work; the reader is chosen by the file's suffix unless the recipe
names one (``data.reader: {type: itk}``).  Every failure becomes a one-line ``ToolboxError``
that names the file.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolbox.errors import ToolboxError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".tif", ".tiff", ".png", ".dcm", ".nrrd", ".mha", ".mhd")

# MONAI warns on every reader construction that nvImageCodec (a GPU JPEG decoder) is absent.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)


@dataclass
class Image:
    array: np.ndarray  # float32, (C, *spatial)
    path: str
    meta: dict = field(default_factory=dict)


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def default_reader_name(path: Path) -> str:
    if path.is_dir():
        return "pydicom"
    suffix = suffix_of(path)
    if suffix in (".nii", ".nii.gz"):
        return "nibabel"
    if suffix in (".png", ".tif", ".tiff"):
        return "pil"
    if suffix == ".dcm":
        return "pydicom"
    return "itk"


def default_reader(path: Path):
    """The MONAI reader for ``path``'s kind (by suffix; a folder is a DICOM series)."""
    import monai.data

    return getattr(monai.data, {"nibabel": "NibabelReader", "pil": "PILReader", "pydicom": "PydicomReader",
                                "itk": "ITKReader"}[default_reader_name(path)])()


def read_image(path, spatial_dims: int, channels: int = 1, reader=None) -> Image:
    """Read ``path`` with a MONAI ``reader`` (by default the one for its suffix) as
    ``(channels, *spatial)`` float32; squeeze singleton extra axes."""
    path = Path(path)
    reader = reader if reader is not None else default_reader(path)
    try:
        # The reader itself rather than LoadImage, which builds every MONAI reader each call.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data, meta = reader.get_data(reader.read(str(path)))
    except Exception as error:  # every reader raises its own types; all mean "unreadable"
        reason = str(error).strip().splitlines()
        reason = reason[-1] if reason else type(error).__name__
        raise ToolboxError(f"{path}: cannot read this image ({reason[:200]})") from error
    tensor = np.asarray(data)
    channel_axis = meta.get("original_channel_dim")
    if channel_axis is None or (isinstance(channel_axis, float) and np.isnan(channel_axis)) \
            or channel_axis == "no_channel":
        tensor = tensor[None]
    else:
        tensor = np.moveaxis(tensor, int(channel_axis), 0)
    array = np.asarray(tensor, dtype=np.float32)
    # Drop singleton axes beyond the spatial ones (a 2D slice stored as (X, Y, 1)).
    while array.ndim > spatial_dims + 1 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != spatial_dims + 1:
        raise ToolboxError(
            f"{path}: has shape {tuple(array.shape[1:])} (plus {array.shape[0]} channel(s)); "
            f"a {spatial_dims}D model needs {spatial_dims} spatial axes"
        )
    if array.shape[0] != channels:
        raise ToolboxError(
            f"{path}: has {array.shape[0]} channels, the recipe expects {channels} "
            "(data.channels)"
        )
    if array.size == 0:
        raise ToolboxError(f"{path}: the image is empty")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ToolboxError(f"{path}: {bad} voxel(s) are NaN or infinite; fix or mask them first")
    return Image(array=array, path=str(path), meta=dict(meta))
