"""Images as ``toolbox`` reads and writes them: ``Volume``, the ``ImageFormat`` contract, and
choosing a registered format for a path.

Every image ``toolbox`` reads (training data, ``denoise`` and ``evaluate`` inputs) goes
through a registered ``ImageFormat`` (hook ``register_formats``): the built-in DICOM series,
NIfTI, TIFF, PNG and ITK (NRRD / MHA) ones (``toolbox.formats``) are registered like any
plugin's, keep everything needed to write the image back (per-slice DICOM headers, NIfTI
header and affine, TIFF axes, stored dtype) and write it with the same format.

A ``Volume`` holds the image in the input's physical units (Hounsfield units for CT: the
DICOM rescale is applied) as float32 ``(C, *spatial)``; ``slice_axis`` names the spatial axis
along which a 2D model is applied slice by slice.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolbox.checkpoint import atomic_write
from toolbox.data.readers import suffix_of
from toolbox.errors import ToolboxError


@dataclass
class Volume:
    array: np.ndarray  # float32 (C, *spatial), physical units
    path: Path  # the file, or the DICOM folder
    format: str  # the registered name of the format that read it (and writes it back)
    stored_dtype: np.dtype  # dtype of the stored values (written back the same)
    value_range: tuple[float, float]  # what the stored type can hold, in physical units
    slice_axis: int | None = None  # spatial axis of the slices (3D inputs)
    meta: dict = field(default_factory=dict)
    name: str = ""  # short name for tables and output files
    padding: np.ndarray | None = None  # True where the file marks a voxel as padding, not image
    spacing: tuple | None = None  # mm per spatial axis of ``array``, when the file says

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
        mask, original = self.padding, self.array
        if units.shape != original.shape:  # super-resolution: each input voxel became a block
            from toolbox.resolution import scale_factors

            for axis, factor in enumerate(scale_factors(original.shape, units.shape), start=1):
                mask, original = np.repeat(mask, factor, axis), np.repeat(original, factor, axis)
        return np.where(mask, original, units).astype(np.float32)

    @property
    def spatial_dims(self) -> int:
        return self.array.ndim - 1


def squeeze_spacing(array: np.ndarray, spacing, min_axes: int = 2):
    """``spacing`` of the axes ``squeeze_spatial`` keeps (None stays None)."""
    if spacing is None:
        return None
    return tuple(spacing[a - 1] for a in _kept_axes(array, min_axes))


def squeeze_spatial(array: np.ndarray, slice_axis: int | None, min_axes: int = 2):
    """Drop singleton spatial axes (a 2D slice stored as (X, Y, 1)), keeping ``min_axes``.

    Returns the squeezed array and where ``slice_axis`` went (None if it was dropped).
    """
    keep = _kept_axes(array, min_axes)
    squeezed = array.reshape([array.shape[0]] + [array.shape[a] for a in keep])
    if slice_axis is not None:
        slice_axis = keep.index(slice_axis + 1) if slice_axis + 1 in keep else None
    return squeezed, slice_axis


def _kept_axes(array: np.ndarray, min_axes: int) -> list[int]:
    spatial = list(range(1, array.ndim))
    keep = [a for a in spatial if array.shape[a] > 1]
    for axis in spatial:  # too few left: keep singletons from the front
        if len(keep) >= min_axes:
            break
        if axis not in keep:
            keep.append(axis)
    return sorted(keep)


def dtype_range(dtype: np.dtype) -> tuple[float, float]:
    """The values a stored dtype can hold (infinite for floats)."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return -np.inf, np.inf


def check_finite(array: np.ndarray, path: Path) -> None:
    """A one-line error for an empty image or one with NaN / infinite voxels."""
    if array.size == 0 or 0 in array.shape:
        raise ToolboxError(f"{path}: the image is empty (shape {array.shape})")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ToolboxError(f"{path}: {bad} voxel(s) are NaN or infinite; fix or mask them first")


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


def write_file(output: Path, overwrite: bool, write) -> None:
    """``write(path)`` to a temporary file with ``output``'s suffix (writers pick the format,
    and gzip, from it), renamed to ``output`` once complete."""
    if output.exists() and not overwrite:
        raise ToolboxError(f"{output}: already exists; pass --overwrite to replace it")
    suffix = suffix_of(output)

    def write_with_suffix(tmp: Path) -> None:
        named = tmp.with_name(tmp.name + suffix)
        try:
            write(named)
            os.replace(named, tmp)
        finally:
            named.unlink(missing_ok=True)

    atomic_write(output, write_with_suffix)


def file_starts_with(path: Path, *signatures: bytes, offset: int = 0) -> bool:
    """Whether the file's bytes at ``offset`` begin with one of ``signatures``."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            start = handle.read(max(len(s) for s in signatures))
    except OSError:
        return False
    return any(start.startswith(s) for s in signatures)


class ImageFormat(abc.ABC):
    """A file format ``toolbox`` reads and writes back (hook ``register_formats``).

    ``suffixes``: lower-case name endings it claims (``(".nii.gz", ".nii")``).  ``sniff``
    says from the content whether a path (a file, or a folder for series formats) is in
    this format: it picks among formats claiming the same suffix and finds files whose
    suffix is wrong or missing.  ``read`` returns a ``Volume`` whose ``format`` is the
    registered name (``self.name``, set when the format is built); ``write`` writes a
    volume it read, with new values ``units``, like the input.
    """

    name: str = ""
    suffixes: tuple[str, ...] = ()

    def sniff(self, path: Path) -> bool:
        return False

    @abc.abstractmethod
    def read(self, path: Path, series: str | None = None, channels: int | None = None) -> Volume:
        """The image at ``path`` (a file, or a folder for series formats)."""

    def write(self, volume: Volume, units: np.ndarray, output: Path, description: str, overwrite: bool) -> None:
        raise ToolboxError(f"{output}: {self.name} images cannot be written; write to another format")

    def rescaled(self, volume: Volume, factors: tuple[int, ...]) -> Volume:
        """``volume`` as a template for an output ``factors`` times larger along each spatial
        axis (super-resolution; a factor below 1 is a coarser grid) covering the same
        physical extent: spacing divided by the factor, the first voxel centre moved by
        ``spacing * (1 / factor - 1) / 2`` along each axis (a quarter of the old spacing back
        at 2x), headers updated."""
        raise ToolboxError(f"{volume.path}: {self.name} outputs cannot change size (super-resolution) here; "
                           "write to NIfTI (.nii.gz) instead")


def rescaled_template(volume: Volume, factors, **meta) -> Volume:
    """A copy of ``volume`` for a ``factors`` x larger output (for ``ImageFormat.rescaled``):
    no pixels of its own (writers take the new values), no padding mask, spacing divided."""
    shape = (volume.array.shape[0],) + tuple(int(round(s * f)) for s, f in zip(volume.array.shape[1:], factors))
    spacing = (tuple(s / f for s, f in zip(volume.spacing, factors)) if volume.spacing is not None else None)
    return dataclasses.replace(volume, array=np.broadcast_to(np.float32(0), shape), padding=None, spacing=spacing,
                               meta={**volume.meta, **meta})


def first_centre_shift(factor: float) -> float:
    """Where the first voxel centre of a ``factor`` x finer grid lies, in old voxels from the
    old first centre (the same extent tiled by smaller voxels): -0.25 at 2x."""
    return (1.0 / factor - 1.0) / 2.0


def formats_of(registry) -> list[ImageFormat]:
    """Every registered format, built, in registration order (built-ins first)."""
    built = []
    for component in registry.components("formats", ordered=True).values():
        image_format = registry.build("formats", component.name)
        image_format.name = component.name
        built.append(image_format)
    return built


def known_suffixes(formats: list[ImageFormat]) -> list[str]:
    return list(dict.fromkeys(s for f in formats for s in f.suffixes))


def _sniffs(image_format: ImageFormat, path: Path) -> bool:
    """Whether ``image_format`` recognises ``path``; a sniffer that fails (a damaged file,
    a plugin's bug) says no rather than taking the command down."""
    try:
        return bool(image_format.sniff(path))
    except Exception:  # noqa: BLE001 - see above
        return False


def find_format(path: Path, formats: list[ImageFormat]) -> ImageFormat:
    """The format of ``path``: by the longest suffix that formats claim, the content
    deciding between formats that claim the same one; by content alone when no format
    claims the suffix or the content says it is another format."""
    name = path.name.lower()
    claims = [(len(s), f) for f in formats for s in f.suffixes if name.endswith(s)] if path.is_file() else []
    longest = max((n for n, _ in claims), default=0)
    by_suffix = [f for n, f in claims if n == longest]
    for image_format in by_suffix:
        if _sniffs(image_format, path):
            return image_format
    for image_format in formats:
        if image_format not in by_suffix and _sniffs(image_format, path):
            return image_format
    if by_suffix:
        return by_suffix[0]
    if path.is_dir():
        raise ToolboxError(f"{path}: no DICOM series or other image folder here")
    raise ToolboxError(f"{path}: unknown image type '{suffix_of(path)}'; expected one of "
                       f"{', '.join(known_suffixes(formats))} or a DICOM folder")


def read_volume(path, formats: list[ImageFormat], series: str | None = None, channels: int | None = None) -> Volume:
    """Read a file, or a folder holding one DICOM series (``series`` picks among several)."""
    path = Path(path)
    if not path.exists():
        raise ToolboxError(f"{path}: no such file or folder")
    if path.is_file() and path.stat().st_size == 0:
        raise ToolboxError(f"{path}: the file is empty (0 bytes)")
    image_format = find_format(path, formats)
    volume = image_format.read(path, series=series, channels=channels)
    volume.format = image_format.name
    return volume


def write_volume(volume: Volume, units: np.ndarray, output: Path, description: str, formats: list[ImageFormat],
                 overwrite: bool = False) -> Path:
    """Write ``units`` (float, same shape as ``volume.array``, or whole multiples of it from a
    super-resolution model) to ``output`` with the format that read ``volume``, like it
    (geometry and headers kept or rescaled, written atomically)."""
    output = Path(output)
    image_format = next((f for f in formats if f.name == volume.format), None)
    if image_format is None:
        raise ToolboxError(f"{output}: no registered format '{volume.format}' to write this image with")
    if units.shape != volume.array.shape:  # a super-resolution output: the geometry changes with it
        from toolbox.resolution import scale_factors

        if units.shape[0] != volume.array.shape[0] or units.ndim != volume.array.ndim:
            raise ValueError(f"output shape {units.shape} does not fit input {volume.array.shape}")
        volume = image_format.rescaled(volume, scale_factors(volume.array.shape, units.shape))
    if output.exists() and overwrite and output.is_dir() and not getattr(image_format, "folders", False):
        raise ToolboxError(f"{output}: is a folder; a {volume.format} input gives a file")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ToolboxError(f"{output.parent}: cannot create the output folder ({error.strerror})") from error
    if not os.access(output.parent, os.W_OK):
        raise ToolboxError(f"{output.parent}: the output folder is not writable")
    image_format.write(volume, units, output, description, overwrite)
    return output


def check_output(inputs: list[Path], output: Path, overwrite: bool) -> None:
    """Refuse outputs that are inputs, lie inside an input folder, or exist already."""
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


def expand_inputs(paths, formats: list[ImageFormat], depth: int = 3) -> list[Path]:
    """Inputs of a batch: files as given; a folder a format reads as one image (a DICOM
    series) is one input; a folder of image files gives each file; a folder of folders
    gives each sub-folder (``depth`` levels down, symbolic links to folders not followed)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    suffixes = tuple(known_suffixes(formats))
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
        if any(getattr(f, "folders", False) and _sniffs(f, entry) for f in formats):
            inputs.append(entry)
        elif any(p.name.lower().endswith(suffixes) for p in files):
            inputs.extend(p for p in files if p.name.lower().endswith(suffixes))
        elif folders and depth > 0:
            inputs.extend(expand_inputs(folders, formats, depth - 1))
        else:
            raise ToolboxError(f"{entry}: no images ({', '.join(suffixes)}) or DICOM files here")
    return inputs
