"""NRRD and MetaImage (MHA / MHD) through ITK: spacing, origin and direction kept."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from toolbox.data.volumes import (ImageFormat, Volume, check_finite, dtype_range, file_starts_with,
                                  first_centre_shift, rescaled_template, to_stored, write_file)
from toolbox.errors import ToolboxError


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
    check_finite(array, path)
    return Volume(
        array=array, path=path, format="itk", stored_dtype=data.dtype,
        value_range=dtype_range(data.dtype), slice_axis=0 if array.ndim == 4 else None,
        meta={"spacing": tuple(image.GetSpacing()), "origin": tuple(image.GetOrigin()),
              "direction": np.array(image.GetDirection())},
        name=path.name, spacing=tuple(float(s) for s in reversed(tuple(image.GetSpacing()))),  # array is (z, y, x)
    )


def write_itk(volume: Volume, units: np.ndarray, output: Path, description: str, overwrite: bool) -> None:
    import itk

    stored = to_stored(volume, units)
    data = stored[0] if stored.shape[0] == 1 else np.moveaxis(stored, 0, -1)
    image = itk.image_from_array(np.ascontiguousarray(data), is_vector=stored.shape[0] > 1)
    image.SetSpacing(volume.meta["spacing"])
    image.SetOrigin(volume.meta["origin"])
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(volume.meta["direction"])))
    write_file(output, overwrite, lambda path: itk.imwrite(image, str(path)))


class ItkFormat(ImageFormat):
    """NRRD, MHA and MHD images (ITK)."""

    suffixes = (".nrrd", ".mha", ".mhd")

    def sniff(self, path: Path) -> bool:
        return path.is_file() and file_starts_with(path, b"NRRD", b"ObjectType")

    def read(self, path, series=None, channels=None):
        return read_itk(path)

    def write(self, volume, units, output, description, overwrite):
        write_itk(volume, units, output, description, overwrite)

    def rescaled(self, volume, factors):
        # ITK's axes are the array's reversed ((z, y, x) array, (x, y, z) spacing).
        itk_factors = list(reversed(tuple(factors)))
        spacing = np.array(volume.meta["spacing"], dtype=float)
        shift = np.array([first_centre_shift(f) for f in itk_factors]) * spacing
        origin = np.array(volume.meta["origin"], dtype=float) + volume.meta["direction"] @ shift
        return rescaled_template(volume, factors, spacing=tuple(spacing / np.array(itk_factors)),
                                 origin=tuple(origin))
