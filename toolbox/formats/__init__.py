"""The built-in image formats (DICOM, NIfTI, TIFF, PNG, ITK); ``toolbox_plugins.formats``
registers them through the ``register_formats`` hook like any plugin's."""
