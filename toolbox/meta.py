"""The package's version and the names plugins are found by (a leaf: imports nothing)."""

__version__ = "0.1.0"

PROJECT = "toolbox"  # pluggy project name: hook markers and hookspecs share it
ENTRY_POINT_GROUP = "denoise_toolbox"  # where third-party packages declare their plugins
