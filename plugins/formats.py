"""The built-in image formats, registered through the same hook a third-party format uses."""

from __future__ import annotations

import toolbox
from toolbox.io import DicomFormat, ItkFormat, NiftiFormat, PngFormat, TiffFormat


@toolbox.hookimpl
def register_formats(register):
    register("dicom", DicomFormat)
    register("nifti", NiftiFormat)
    register("tiff", TiffFormat)
    register("png", PngFormat)
    register("itk", ItkFormat, aliases=("nrrd", "metaimage"))
