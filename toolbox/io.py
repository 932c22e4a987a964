"""Reading and writing images (public API): everything a format plugin or a script needs.

- ``Volume``: an image in its physical units ``(C, *spatial)`` with what writing it back
  needs; ``ImageFormat``: the base of a format (``register_formats`` hook).
- ``formats_of(registry)``: the registered formats; ``read_volume(path, formats)``,
  ``write_volume(volume, units, output, description, formats)``, ``expand_inputs``,
  ``check_output`` (refuses an output that would overwrite an input), ``find_format``.
- Helpers for format authors: ``to_stored``, ``write_file`` (atomic, with the output's
  suffix), ``file_starts_with`` (content sniffing), ``dtype_range``, ``check_finite``;
  ``rescaled_template`` and ``first_centre_shift`` for ``ImageFormat.rescaled`` (outputs of
  super-resolution models on a finer grid over the same extent).
- The built-in formats: ``DicomFormat``, ``NiftiFormat``, ``TiffFormat``, ``PngFormat``,
  ``ItkFormat``.

Every output is written under a temporary name and renamed once complete; an output that
would overwrite an input is refused; an existing output needs ``overwrite=True``.
"""

from __future__ import annotations

from toolbox.data.volumes import (ImageFormat, Volume, check_finite, check_output, dtype_range, expand_inputs,
                                  file_starts_with, find_format, first_centre_shift, formats_of, known_suffixes,
                                  read_volume, rescaled_template, squeeze_spatial, to_stored, write_file,
                                  write_volume)
from toolbox.formats.dicom import DicomFormat
from toolbox.formats.itk import ItkFormat
from toolbox.formats.nifti import NiftiFormat
from toolbox.formats.raster import PngFormat, TiffFormat

__all__ = ["ImageFormat", "Volume", "check_finite", "check_output", "dtype_range", "expand_inputs",
           "file_starts_with", "find_format", "first_centre_shift", "formats_of", "known_suffixes", "read_volume",
           "rescaled_template", "squeeze_spatial",
           "to_stored", "write_file", "write_volume", "DicomFormat", "ItkFormat", "NiftiFormat", "PngFormat",
           "TiffFormat"]
