"""``toolbox noise simulate`` (noisy / clean pairs from clean images) and ``toolbox noise
estimate`` (the noise of a user's own image, as a recipe snippet)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from toolbox.errors import ToolboxError


def simulate(inputs, output: Path, noise_spec: dict, registry, normalize: dict | None = None, copies: int = 1,
             seed: int = 0, overwrite: bool = False, console=None) -> list[Path]:
    """Write ``output/noisy/NAME`` and ``output/clean/NAME`` for every input (``NAME`` gets
    ``_cK`` for copies beyond the first), in the input's format: a folder ``data.paired``
    takes as it is.  Copy k of input i draws from seed ``(seed, i, k)``."""
    from toolbox.console import make_console
    from toolbox.data.datasets import noisy_in_units
    from toolbox.data.normalize import fit_normalizer
    from toolbox.data.volumes import check_output, expand_inputs, formats_of, read_volume, write_volume

    console = console or make_console()
    if copies < 1:
        raise ToolboxError(f"--copies must be at least 1, got {copies}")
    formats = formats_of(registry)
    noise = registry.build("noise_models", noise_spec, "--noise", "noise")
    items = expand_inputs(inputs, formats)
    output = Path(output)
    check_output(items, output, overwrite)
    written = []
    for index, item in enumerate(items):
        volume = read_volume(item, formats)
        clean = volume.image_values()
        normalizer = fit_normalizer(normalize or {"type": "percentile"}, clean)
        for copy in range(copies):
            generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, index, copy]).generate_state(1)[0]))
            noisy = noisy_in_units(noise, clean, normalizer, generator, volume.spacing, volume.slice_axis, where=item)
            name = item.name if copy == 0 else _copy_name(item.name, copy)
            description = f"simulated {noise_spec.get('type')} noise, copy {copy}"
            written.append(write_volume(volume, volume.restore_padding(noisy), output / "noisy" / name, description,
                                        formats, overwrite))
            written.append(write_volume(volume, volume.array, output / "clean" / name, "clean reference", formats,
                                        overwrite))
        console.print(f"{item.name}: {copies} noisy cop{'y' if copies == 1 else 'ies'}")
    console.print(f"wrote {output / 'noisy'} and {output / 'clean'} (use them as data.paired)")
    return written


def _copy_name(name: str, copy: int) -> str:
    for suffix in (".nii.gz", ".nii", ".tiff", ".tif", ".png", ".dcm", ".nrrd", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return f"{name[: -len(suffix)]}_c{copy}{name[-len(suffix):]}"
    return f"{name}_c{copy}"


def estimate(paths, registry, model: str = "all", normalize: dict | None = None, offset: float | None = None,
             console=None) -> dict:
    """Estimate the noise of each image and print a ``data.noise`` snippet that reproduces
    it in the units ``normalize`` defines (default: percentile)."""
    from rich.table import Table

    from toolbox.console import make_console
    from toolbox.data.normalize import fit_normalizer
    from toolbox.data.volumes import expand_inputs, formats_of, read_volume, squeeze_spatial
    from toolbox.noise_estimation import estimate_gaussian, estimate_poisson_gaussian, estimate_rician

    console = console or make_console()
    estimators = {"gaussian": estimate_gaussian, "rician": estimate_rician,
                  "poisson_gaussian": lambda image: estimate_poisson_gaussian(image, offset=offset)}
    if model != "all" and model not in estimators:
        raise ToolboxError(f"--model must be all or one of {', '.join(estimators)}, got {model!r}")
    chosen = estimators if model == "all" else {model: estimators[model]}
    formats = formats_of(registry)
    table = Table(title="Noise estimates in the image's own units; snippets: gaussian / rician in the "
                        "recipe's normalised units (--normalize), camera in the image's units")
    for column in ("image", "model", "estimate", "recipe snippet"):
        table.add_column(column, overflow="fold")
    results, snippets = {}, []
    for item in expand_inputs(paths, formats):
        volume = read_volume(item, formats)
        image, _ = squeeze_spatial(volume.image_values(), volume.slice_axis)  # (X, Y, 1) is a 2D image
        scale = fit_normalizer(normalize or {"type": "percentile"}, image).scale
        results[item.name] = {}
        for name, estimator in chosen.items():
            try:
                found = estimator(image)
            except ValueError as error:
                table.add_row(item.name, name, f"not estimated: {error}", "")
                continue
            results[item.name][name] = found
            value = (f"sigma {found.sigma:.4g}" if found.sigma is not None else
                     f"gain {found.gain:.4g}, variance at 0: {found.intercept:.4g}"
                     + (f", read sd {found.read_sd:.4g}" if found.read_sd is not None else ""))
            snippet = found.snippet(1.0 if name == "poisson_gaussian" else scale)
            table.add_row(item.name, name, value, snippet)
            snippets.append(f"{item.name} ({name}): {snippet}")
            if name == "gaussian":  # what a noise-conditional model is told (it estimates the same way)
                snippets.append(f"{item.name}: toolbox denoise MODEL {item.name} -o OUT --sigma {found.sigma:.4g}")
    console.print(table)
    for line in snippets:  # unwrapped, to copy into a recipe's data section
        console.print(line, soft_wrap=True, highlight=False, markup=False)
    return results
