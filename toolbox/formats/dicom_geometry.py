"""The headers of a DICOM series on a finer grid (super-resolution outputs) or a coarser one
(the low-resolution input of a super-resolution run, written beside its output).

Each output voxel centre is placed so that the new grid tiles the same physical extent as
the input's: PixelSpacing divided by the factors, ImagePositionPatient moved along the row
and column directions (ImageOrientationPatient) by ``spacing * (1 / factor - 1) / 2``, and,
along the slices, ``factor`` slices per input slice at their own positions, with
SliceThickness, SpacingBetweenSlices, SliceLocation and InstanceNumber to match (a coarser
grid: one slice per group, at the group's centre).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from toolbox.data.volumes import Volume, first_centre_shift, rescaled_template
from toolbox.errors import ToolboxError


def _decimal(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.6g}"


def _in_plane(ds, row_factor: float, column_factor: float) -> None:
    """Spacing and corner of one slice's pixel grid, ``row_factor`` x as many rows."""
    if "PixelSpacing" not in ds:
        return  # no physical geometry to keep
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    ds.PixelSpacing = [_decimal(row_spacing / row_factor), _decimal(column_spacing / column_factor)]
    orientation, position = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
    if orientation is None or position is None:
        return
    along_row = np.array(orientation[:3], float)  # direction of increasing column index
    along_column = np.array(orientation[3:], float)  # direction of increasing row index
    moved = (np.array(position, float) + along_row * column_spacing * first_centre_shift(column_factor)
             + along_column * row_spacing * first_centre_shift(row_factor))
    ds.ImagePositionPatient = [_decimal(v) for v in moved]


def _slices(headers: list, factor: float, where: Path) -> list:
    """``factor`` headers per input slice at the positions of the finer slice grid (a factor
    1 / k: one header per k input slices, at the centre of the k, for a coarser grid)."""
    if factor == 1:
        return headers
    if len(headers) < 2:
        raise ToolboxError(f"{where}: one DICOM slice cannot be put on another slice grid; write NIfTI instead")
    positions = [np.array(h.ImagePositionPatient, float) if "ImagePositionPatient" in h else None for h in headers]
    if any(p is None for p in positions):
        raise ToolboxError(f"{where}: slices without ImagePositionPatient cannot be placed on another grid; "
                           "write NIfTI instead")
    steps = [positions[i + 1] - positions[i] for i in range(len(positions) - 1)]
    locations = [float(h.SliceLocation) if "SliceLocation" in h else None for h in headers]
    out = []
    group = 1 if factor >= 1 else int(round(1 / factor))  # input slices per output slice
    for index in range(0, len(headers), group):
        source = headers[index]
        step = steps[min(index, len(steps) - 1)]  # to the next slice (the last one: from the one before)
        location_step = None
        if None not in locations:
            location_step = locations[min(index + 1, len(locations) - 1)] - locations[min(index, len(locations) - 2)]
        for part in range(max(1, int(round(factor)))):
            fraction = first_centre_shift(factor) + part / factor
            ds = copy.deepcopy(source)
            ds.ImagePositionPatient = [_decimal(v) for v in positions[index] + step * fraction]
            if location_step is not None:
                ds.SliceLocation = _decimal(locations[index] + location_step * fraction)
            for tag in ("SliceThickness", "SpacingBetweenSlices"):
                if str(ds.get(tag, "") or "").strip():
                    setattr(ds, tag, _decimal(float(ds.get(tag)) / factor))
            name = Path(getattr(source, "filename", f"slice{index}") or f"slice{index}")
            ds.filename = str(name.with_name(f"{name.stem}_{part}{name.suffix}"))
            out.append(ds)
    for number, ds in enumerate(out, start=1):
        ds.InstanceNumber = number
    return out


def rescaled_dicom(volume: Volume, factors) -> Volume:
    """A template for writing an output ``factors`` x the input's size (spatial axes of
    ``volume.array``: (slices,) rows, columns)."""
    factors = tuple(factors)
    if volume.meta.get("multiframe") and len(factors) == 3 and factors[0] != 1:
        raise ToolboxError(f"{volume.path}: a multi-frame DICOM cannot gain frames here; write NIfTI instead")
    slice_factor, (row_factor, column_factor) = (factors[0] if len(factors) == 3 else 1), factors[-2:]
    headers = _slices(volume.meta["headers"], slice_factor, volume.path)
    if slice_factor == 1:  # the input's own headers: change copies, not what was read
        headers = [copy.deepcopy(ds) for ds in headers]
    for ds in headers:
        _in_plane(ds, row_factor, column_factor)
    return rescaled_template(volume, factors, headers=headers)
