"""TIFF (tifffile: stacks, axes and bit depth kept) and PNG (Pillow: 8 or 16 bits)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolbox.data.volumes import (ImageFormat, Volume, check_finite, dtype_range, file_starts_with,
                                  rescaled_template, to_stored, write_file)
from toolbox.errors import ToolboxError


def read_tiff(path: Path) -> Volume:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data = series.asarray()
            axes = series.axes
            resolution = _resolution(tif)
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
    check_finite(array, path)
    return Volume(
        array=array, path=path, format="tiff", stored_dtype=dtype, value_range=dtype_range(dtype),
        slice_axis=0 if array.ndim == 4 else None, meta={"axes": series.axes, **resolution}, name=path.name,
    )


def _resolution(tif) -> dict:
    """Pixels per unit along X and Y (the TIFF tags) and the unit, when the file has them;
    ImageJ's slice spacing of a stack too."""
    page = tif.pages[0]
    found = {}
    x, y = page.tags.get("XResolution"), page.tags.get("YResolution")
    if x is not None and y is not None:
        def ratio(value):
            return float(value[0]) / float(value[1]) if isinstance(value, tuple) else float(value)

        found["resolution"] = (ratio(x.value), ratio(y.value))
        unit = page.tags.get("ResolutionUnit")
        found["resolution_unit"] = int(unit.value) if unit is not None else 2
    spacing = (tif.imagej_metadata or {}).get("spacing")
    if spacing:
        found["z_spacing"] = float(spacing)
    return found


def write_tiff(volume: Volume, units: np.ndarray, output: Path, description: str, overwrite: bool) -> None:
    import tifffile

    stored = to_stored(volume, units)
    axes = volume.meta["axes"]
    channel = next((i for i, a in enumerate(axes) if a in "SC"), None)
    data = stored[0] if channel is None else np.moveaxis(stored, 0, channel)
    photometric = "rgb" if channel is not None and "S" in axes and data.shape[channel] in (3, 4) else "minisblack"
    extra = {}
    if "resolution" in volume.meta:
        extra = {"resolution": volume.meta["resolution"], "resolutionunit": volume.meta["resolution_unit"]}
    metadata = {"axes": axes}
    if "z_spacing" in volume.meta:
        metadata["spacing"] = volume.meta["z_spacing"]
    write_file(output, overwrite, lambda path: tifffile.imwrite(
        path, data, photometric=photometric, description=description, metadata=metadata, **extra))


def rescaled_tiff(volume: Volume, factors) -> Volume:
    """A finer grid for TIFF: the resolution tags (pixels per unit) grow with the factors.
    TIFF holds no origin, so the pixel grid's offset is not stored (viewers put pixel 0 at
    the image corner, which is where it stays)."""
    meta = {}
    if "resolution" in volume.meta:
        x, y = volume.meta["resolution"]
        meta["resolution"] = (x * factors[-1], y * factors[-2])
    if "z_spacing" in volume.meta and len(factors) == 3:
        meta["z_spacing"] = volume.meta["z_spacing"] / factors[0]
    return rescaled_template(volume, factors, **meta)


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
    check_finite(array, path)
    dtype = np.dtype(np.uint16) if data.dtype.itemsize == 2 or mode.startswith("I") else np.dtype(np.uint8)
    return Volume(array=array, path=path, format="png", stored_dtype=dtype,
                  value_range=dtype_range(dtype), meta={"mode": mode}, name=path.name)


def write_png(volume: Volume, units: np.ndarray, output: Path, description: str, overwrite: bool) -> None:
    from PIL import Image, PngImagePlugin

    stored = to_stored(volume, units)
    data = stored[0] if stored.shape[0] == 1 else np.moveaxis(stored, 0, -1)
    info = PngImagePlugin.PngInfo()
    info.add_text("Description", description)
    write_file(output, overwrite, lambda path: Image.fromarray(data).save(path, pnginfo=info))


class TiffFormat(ImageFormat):
    """TIFF images and stacks (tifffile)."""

    suffixes = (".tif", ".tiff")

    def sniff(self, path: Path) -> bool:
        return path.is_file() and file_starts_with(path, b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

    def read(self, path, series=None, channels=None):
        return read_tiff(path)

    def write(self, volume, units, output, description, overwrite):
        write_tiff(volume, units, output, description, overwrite)

    def rescaled(self, volume, factors):
        return rescaled_tiff(volume, factors)


class PngFormat(ImageFormat):
    """PNG images, 8 or 16 bits, grey or colour (Pillow)."""

    suffixes = (".png",)

    def sniff(self, path: Path) -> bool:
        return path.is_file() and file_starts_with(path, b"\x89PNG\r\n\x1a\n")

    def read(self, path, series=None, channels=None):
        return read_png(path)

    def write(self, volume, units, output, description, overwrite):
        write_png(volume, units, output, description, overwrite)
