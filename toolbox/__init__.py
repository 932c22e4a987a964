"""toolbox: adversarial denoising of medical and scientific images, built from plugins.

``toolbox`` is the only door: plugins, scripts and the built-in plugins and benchmarks use
the names below and the public modules ``toolbox.nn`` (network helpers), ``toolbox.io``
(reading and writing images), ``toolbox.export`` (export formats) and ``toolbox.testing``
(contract checks for plugin authors);
every other module is private and may change.

Plugins:
- ``hookimpl``: the marker for plugin hook implementations (see ``toolbox.hookspecs``).
- ``components(kind)``, ``build(kind, spec, **injected)``, ``plugin_registry()``: the parts the
  installed plugins registered.
- ``Scheme`` / ``GANScheme``: the bases of training schemes; ``Parts`` what a scheme
  builds from the recipe; ``WeightedLoss`` a recipe loss with its weight.
- ``ToolboxError`` (a user mistake; the CLI prints it as one line), ``RecipeError`` (one
  that names the recipe file and key), ``atomic_write(path, write)``, ``unwrap(net)`` (the
  network inside a DistributedDataParallel wrapper).
- ``HostedModel(url, sha256, filename, card)``: a pretrained model registered by address
  (``register_models``), fetched once into the cache and checked against its SHA-256;
  ``sha256_of(path)`` the hex digest such checks use.

Scripts (each uses the installed plugins):
- ``load_recipe``, ``validate_recipe``, ``build_data``, ``build_scheme``, ``build_generator``,
  ``seed_everything``, ``make_loader``, ``run_training``;
- ``read_volume``, ``write_volume`` (with the registered formats; ``toolbox.io`` has the rest);
- ``load_model``, ``denoise_with_model``, ``TrainedModel``, ``denoise_options(model,
  sigma=, ensemble=, window=, amp=, adapt=)`` (a model set as ``toolbox denoise``'s options
  set it; ``adapt``: steps of test-time adaptation to each image, as ``--adapt``),
  ``evaluate``, ``build_cases``,
  ``run_baseline``, ``classical_baseline`` (BM3D / BM4D when installed), ``non_local_means``,
  ``anscombe_baseline`` (BM3D / BM4D for Poisson noise), ``psnr_ssim``, ``write_grid`` and
  ``write_line_plot`` (the figures ``toolbox`` draws);
  ``LatentInversion`` (a latent generator as a denoiser: seed 001's latent search) and
  ``poisson_nll`` (its count-image data term).

Heavy modules (torch, MONAI) are imported lazily so that ``toolbox --help`` starts fast.
"""

from __future__ import annotations

import importlib

import pluggy

from toolbox.errors import RecipeError, ToolboxError
from toolbox.meta import ENTRY_POINT_GROUP, PROJECT, __version__

hookimpl = pluggy.HookimplMarker(PROJECT)

#: Modules a plugin or script may import, besides ``toolbox`` itself.
PUBLIC_MODULES = ("toolbox.nn", "toolbox.io", "toolbox.testing", "toolbox.hookspecs", "toolbox.export")

# name -> (private module, attribute): re-exported on first use.
_LAZY = {
    "Scheme": ("toolbox.scheme", "Scheme"),
    "GANScheme": ("toolbox.gan", "GANScheme"),
    "Parts": ("toolbox.parts", "Parts"),
    "WeightedLoss": ("toolbox.parts", "WeightedLoss"),
    "atomic_write": ("toolbox.checkpoint", "atomic_write"),
    "unwrap": ("toolbox.distributed", "unwrap"),
    "seed_everything": ("toolbox.rng", "seed_everything"),
    "make_loader": ("toolbox.data.sampling", "make_loader"),
    "TrainedModel": ("toolbox.infer", "TrainedModel"),
    "LatentInversion": ("toolbox.latent_inversion", "LatentInversion"),
    "poisson_nll": ("toolbox.latent_inversion", "poisson_nll"),
    "HostedModel": ("toolbox.pretrained", "HostedModel"),
    "sha256_of": ("toolbox.pretrained", "sha256_of"),
    "denoise_with_model": ("toolbox.infer", "denoise_with_model"),
    "denoise_options": ("toolbox.infer", "check_options"),
    "run_baseline": ("toolbox.evaluation", "run_baseline"),
    "classical_baseline": ("toolbox.baselines", "bm3d_or_bm4d"),
    "non_local_means": ("toolbox.baselines", "non_local_means"),
    "anscombe_baseline": ("toolbox.baselines", "anscombe_bm3d_or_bm4d"),
    "write_grid": ("toolbox.figures", "write_grid"),
    "write_line_plot": ("toolbox.figures", "write_line_plot"),
    "psnr_ssim": ("toolbox.metrics", "psnr_ssim"),
}


def plugin_registry():
    """The process-wide registry: every part the built-in and installed plugins registered."""
    from toolbox.plugins import get_registry

    return get_registry()


def components(kind: str) -> dict:
    """Registered components of ``kind``: name -> ``Component`` (factory, plugin, aliases)."""
    return plugin_registry().components(kind)


def build(kind: str, spec, **injected):
    """Build one part from its recipe spec ``{"type": NAME, **options}``.

    ``injected`` holds what the core knows (``spatial_dims``, ``in_channels`` ...); it is
    passed only where the factory accepts it.
    """
    return plugin_registry().build(kind, spec, **injected)


def load_recipe(path, overrides=(), profile: str | None = None):
    """Read a recipe, apply a profile and ``KEY.PATH=VALUE`` overrides, check every part."""
    from toolbox.recipe import load_recipe as load

    return load(path, overrides, registry=plugin_registry(), profile=profile)


def validate_recipe(raw: dict, source: str = "recipe", base=None):
    """Check a recipe given as a mapping (as ``load_recipe`` checks a file)."""
    from toolbox.recipe import validate

    return validate(raw, source, base=base, registry=plugin_registry())


def build_data(config: dict, source: str = "recipe"):
    """The training patches and held-out images of a checked recipe's ``data``."""
    from toolbox.data.datasets import build_data as build

    return build(config, plugin_registry(), source)


def build_scheme(recipe, device="cpu", **options):
    """``(parts, scheme)`` for a checked recipe, every network checked on a patch."""
    import torch

    from toolbox.train import build_scheme as build

    return build(recipe, plugin_registry(), torch.device(device), **options)


def build_generator(recipe: dict, source: str = "recipe"):
    """The recipe's generator (untrained, on the CPU) with the inputs the core injects."""
    from toolbox.parts import build_generator as build

    return build(plugin_registry(), recipe, source)


def run_training(recipe, out=None, resume=None, console=None):
    """Train a checked recipe; returns ``(run folder, report)`` as ``toolbox run`` does."""
    from toolbox.train import run_training as run

    return run(recipe, plugin_registry(), out, console=console, resume=resume)


def load_model(path, device="cpu", inversion: dict | None = None):
    """A trained model from a run folder (its best checkpoint) or a checkpoint file;
    ``inversion`` replaces a latent-search model's settings (as ``--inversion``)."""
    import torch

    from toolbox.infer import load_trained_model

    return load_trained_model(path, torch.device(device), plugin_registry(), inversion)


def evaluate(model_path, clean_paths, **options):
    """``toolbox evaluate`` as a function (options as its keyword arguments)."""
    from toolbox.evaluation import evaluate as run

    return run(model_path, clean_paths, plugin_registry(), **options)


def build_cases(model, clean_paths, **options):
    """Clean / noisy pairs in the images' own units, as ``evaluate`` scores them."""
    from toolbox.evaluation import build_cases as build

    return build(model, clean_paths, plugin_registry(), **options)


def read_volume(path, series: str | None = None, channels: int | None = None):
    """Read an image file or DICOM series folder with the registered formats."""
    from toolbox.io import formats_of
    from toolbox.io import read_volume as read

    return read(path, formats_of(plugin_registry()), series=series, channels=channels)


def write_volume(volume, units, output, description: str = "denoised", overwrite: bool = False):
    """Write ``units`` like ``volume`` (same format, geometry and headers) to ``output``."""
    from toolbox.io import formats_of
    from toolbox.io import write_volume as write

    return write(volume, units, output, description, formats_of(plugin_registry()), overwrite)


def __getattr__(name: str):
    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'toolbox' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["hookimpl", "components", "build", "plugin_registry", "ToolboxError", "RecipeError", "load_recipe",
           "validate_recipe", "build_data", "build_scheme", "build_generator", "run_training", "load_model",
           "evaluate", "build_cases", "read_volume", "write_volume", "PUBLIC_MODULES", "__version__", *_LAZY]
