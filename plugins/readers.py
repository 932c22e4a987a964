"""MONAI's image readers, by name (``data.reader: {type: itk}``)."""

from __future__ import annotations

import toolbox


def nibabel_reader(**options):
    """NIfTI via nibabel (MONAI ``NibabelReader``)."""
    from monai.data import NibabelReader

    return NibabelReader(**options)


def itk_reader(**options):
    """Anything ITK reads: NRRD, MHA, TIFF, DICOM series (MONAI ``ITKReader``)."""
    from monai.data import ITKReader

    return ITKReader(**options)


def pydicom_reader(**options):
    """DICOM files and series folders via pydicom (MONAI ``PydicomReader``)."""
    from monai.data import PydicomReader

    return PydicomReader(**options)


def pil_reader(**options):
    """PNG / TIFF / JPEG via Pillow (MONAI ``PILReader``), 16-bit kept."""
    from monai.data import PILReader

    return PILReader(**options)


@toolbox.hookimpl
def register_readers(register):
    register("nibabel", nibabel_reader, aliases=("nifti",))
    register("itk", itk_reader)
    register("pydicom", pydicom_reader, aliases=("dicom",))
    register("pil", pil_reader, aliases=("png", "tiff"))
