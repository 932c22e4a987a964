"""toolbox: adversarial denoising of medical and scientific images, built from plugins.

The public API for plugin authors and scripts:

- ``hookimpl``: the marker for plugin hook implementations (see ``toolbox.hookspecs``).
- ``components(kind)``: the registered names of one kind ("generators", "losses", ...).
- ``build(kind, spec, **injected)``: build a part from ``{"type": NAME, ...options}``.
- ``ToolboxError``: the error type for user mistakes; the CLI prints it as one line.
- ``RecipeError``: a ``ToolboxError`` that names the recipe file and key path.
- ``atomic_write(path, write)``: write a file under a temporary name, renamed when complete.
- ``Scheme``: the base class of training schemes (``toolbox.scheme``).
- ``unwrap(net)``: the network inside a DistributedDataParallel wrapper (under ``torchrun``
  the networks a scheme gets from ``Parts`` are wrapped).

Heavy modules (torch, MONAI) are imported lazily so that ``toolbox --help`` starts fast.
"""

from __future__ import annotations

import pluggy

from toolbox.errors import RecipeError, ToolboxError

__version__ = "0.1.0"

PROJECT = "toolbox"
ENTRY_POINT_GROUP = "denoise_toolbox"

hookimpl = pluggy.HookimplMarker(PROJECT)


def components(kind: str) -> dict:
    """Registered components of ``kind``: name -> ``Component`` (factory, plugin, aliases)."""
    from toolbox.plugins import get_registry

    return get_registry().components(kind)


def build(kind: str, spec, **injected):
    """Build one part from its recipe spec ``{"type": NAME, **options}``.

    ``injected`` holds what the core knows (``spatial_dims``, ``in_channels`` ...); it is
    passed only where the factory accepts it.
    """
    from toolbox.plugins import get_registry

    return get_registry().build(kind, spec, **injected)


def __getattr__(name: str):
    if name == "Scheme":
        from toolbox.scheme import Scheme

        return Scheme
    if name == "atomic_write":
        from toolbox.checkpoint import atomic_write

        return atomic_write
    if name == "unwrap":
        from toolbox.distributed import unwrap

        return unwrap
    raise AttributeError(f"module 'toolbox' has no attribute {name!r}")


__all__ = ["hookimpl", "components", "build", "ToolboxError", "RecipeError", "Scheme", "unwrap",
           "atomic_write", "__version__"]
