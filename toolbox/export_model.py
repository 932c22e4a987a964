"""``toolbox export``: a trained model (run folder, checkpoint or pretrained name) written in
another format, then loaded back with that format's runtime and compared with the toolbox's
own output on a test image; success is reported only when they agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from toolbox.errors import ToolboxError
from toolbox.export import (ExportableNetwork, ExportInfo, FirstOutput, compare, size_multiple, test_image,
                            trace_size, write_atomically, write_sidecar)


def build_exportable(model) -> tuple[ExportableNetwork, ExportInfo]:
    """A loaded ``TrainedModel`` as the network an export runs, and what it takes."""
    from toolbox.meta import __version__
    from toolbox.parts import input_channels
    from toolbox.noise_estimation import level_noise_spec

    recipe, data = model.recipe, model.recipe["data"]
    core = FirstOutput(model.generator).eval()
    multiple = size_multiple(core, model.spatial_dims, input_channels(recipe), model.scale)
    network = ExportableNetwork(core, model.spatial_dims, multiple, model.scale, model.noise_level_map).eval()
    info = ExportInfo(source=str(model.checkpoint), generator=dict(recipe["generator"]),
                      spatial_dims=model.spatial_dims, channels=model.channels, context_slices=model.context,
                      scale=model.scale, noise_level_map=model.noise_level_map, multiple=multiple,
                      normalize=dict(data.get("normalize") or {}), patch_size=list(data["patch_size"]),
                      toolbox_version=__version__, name=str(recipe.get("name") or "model"),
                      noise=level_noise_spec(data), card=_card(model.checkpoint),
                      overlap=float((recipe.get("train") or {}).get("val_overlap", 0.25)))
    return network, info


def _card(checkpoint: Path) -> str:
    from toolbox.pretrained import card_file

    card = card_file(Path(checkpoint))
    return str(card) if card.is_file() else ""


def example_input(info: ExportInfo) -> tuple:
    """The input exports are traced with: a batch of two images of ``trace_size`` per axis
    (where every input's path through the network was checked to be the same; a batch of
    one would let an exporter fix the batch size)."""
    generator = torch.Generator().manual_seed(1)
    sizes = (trace_size(info.multiple),) * info.spatial_dims
    image = torch.rand((2, info.channels * info.context_slices) + sizes, generator=generator)
    return (image, torch.tensor([0.05, 0.1])) if info.noise_level_map else (image,)


def read_test_image(path: Path, info: ExportInfo, registry) -> np.ndarray:
    """A real image as the check's input: normalised as the recipe does, a 2D model's middle
    slice of a volume, cropped to at most twice the patch size per axis (centred)."""
    from toolbox.data.normalize import fit_normalizer
    from toolbox.data.volumes import formats_of, read_volume, squeeze_spatial

    volume = read_volume(Path(path), formats_of(registry), channels=info.channels)
    units, slice_axis = squeeze_spatial(volume.image_values().astype(np.float32), volume.slice_axis)
    if units.ndim - 1 == 3 and info.spatial_dims == 2:
        if info.context_slices > 1:
            raise ToolboxError("--test-image with a 2.5D model: give a 2D image stacked as its channels")
        axis = 1 + (slice_axis or 0)
        units = np.take(units, units.shape[axis] // 2, axis=axis)
    if units.ndim - 1 != info.spatial_dims:
        raise ToolboxError(f"{path}: a {units.ndim - 1}D image; this model is {info.spatial_dims}D")
    normalised = fit_normalizer(info.normalize, units).forward(units).astype(np.float32)
    crops = tuple(slice(max(0, (s - 2 * int(p)) // 2), max(0, (s - 2 * int(p)) // 2) + 2 * int(p))
                  for s, p in zip(normalised.shape[1:], info.patch_size))
    return normalised[(slice(None),) + crops]


def export_model(registry, model_path: Path, fmt: str, output: Path, overwrite: bool = False,
                 test_image_path: Path | None = None, log=print) -> ExportInfo:
    from toolbox.infer import load_trained_model
    from toolbox.latent_inversion import is_latent_generator

    exporter = registry.get("exporters", fmt, "--format", "format").factory()
    output = Path(output)
    if exporter.suffix and not output.name.endswith(exporter.suffix):
        raise ToolboxError(f"{output}: a {fmt} export is written as a file ending in {exporter.suffix}")
    model = load_trained_model(Path(model_path), torch.device("cpu"), registry, channels_last=False)
    if output.resolve() == Path(model.checkpoint).resolve():
        raise ToolboxError(f"{output}: that is the model being exported; choose another output path")
    generator_name = model.recipe["generator"].get("type")
    if is_latent_generator(model.generator):
        raise ToolboxError(f"{model_path}: this model denoises by searching the latent space of '{generator_name}' "
                           "(an optimisation per image, scheme unconditional_gan), which an exported network "
                           "cannot hold; denoise with toolbox denoise")
    try:
        with quiet_tracing():
            network, info = build_exportable(model)
    except ToolboxError as error:
        raise ToolboxError(f"generator '{generator_name}' cannot be exported: {error}") from error
    info.format, info.runtime = fmt, exporter.runtime
    supplied = read_test_image(test_image_path, info, registry) if test_image_path else None

    def make(target: Path) -> None:
        try:
            with torch.no_grad(), quiet_tracing():
                exporter.write(network, example_input(info), target, info)
            run = exporter.load(target, info)
        except ToolboxError as error:
            raise ToolboxError(f"generator '{generator_name}' cannot be exported to {fmt}: {error}") from error
        except Exception as error:  # noqa: BLE001 - any exporter failure is "this part cannot be exported"
            raise ToolboxError(f"generator '{generator_name}' cannot be exported to {fmt}: {_reason(error)}") from error
        image, noise_sd = test_image(info, image=supplied)
        # The test image and its negative at twice the noise level: a trace keeps the branch
        # its example took, so a network that branches on values must meet both kinds.
        inputs = [(image, noise_sd), (1.0 - image, None if noise_sd is None else 2 * noise_sd)]
        results = []
        expect = exporter.reference(network, info)
        for tensor, level in inputs:
            reference = np.asarray(expect(tensor.numpy(), None if level is None else level.numpy()))
            try:
                exported = run(tensor.numpy(), None if level is None else level.numpy())
            except Exception as error:  # noqa: BLE001 - the written file does not run at another size
                raise ToolboxError(f"generator '{generator_name}': the {fmt} export does not run on a "
                                   f"{list(tensor.shape)} test image ({_reason(error)}); nothing was "
                                   "written") from error
            results.append(compare(reference, np.asarray(exported)))
        failed = [r for r in results if not r["passed"]]
        worst = failed[0] if failed else max(results, key=lambda r: r["max_abs_error"] / r["tolerance"])
        info.verification = {"runtime": exporter.runtime, "test_input": list(image.shape),
                             "test_image": (str(test_image_path) if test_image_path else "made (smooth + 5 % noise)")
                             + ", and its negative (1 - image) at twice the noise SD", **worst}
        if failed:
            detail = worst.get("reason") or (f"max |difference| {worst['max_abs_error']:.3g} > "
                                             f"{worst['tolerance']:.3g}")
            raise ToolboxError(f"generator '{generator_name}': the {fmt} export does not reproduce the toolbox's "
                               f"output on a {list(image.shape)} test image ({detail}); nothing was written")

    write_atomically(output, overwrite, make)
    info.files = [str(output)]
    sidecar = write_sidecar(output, info)
    info.files.append(str(sidecar))
    return info


def quiet_tracing():
    """Tracer and exporter warnings silenced: whether a trace generalises is checked by
    running it (``size_multiple`` and the comparison), which says more than they do."""
    import contextlib
    import logging
    import warnings

    import io

    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    # The exporters print graphs and diagnostics of their own; the outcome is reported here.
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    for name in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "torch._export", "onnxscript"):
        logger = logging.getLogger(name)
        stack.callback(logger.setLevel, logger.level)
        logger.setLevel(logging.ERROR)
    return stack


def _reason(error: Exception) -> str:
    """The first informative line of an exporter's error (they can be pages long, and wrap
    the cause: the innermost one says what failed)."""
    import re

    while error.__cause__ is not None:
        error = error.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(error).__name__}: {text}" if text != type(error).__name__ else text
