"""Sliding-window inference with MONAI: memory bounded by the window, not by the image.

Networks that return several outputs (deep supervision) contribute their first, full-size
output.  Overlapping windows are blended with a Gaussian weight so seams do not show.
"""

from __future__ import annotations

import torch

from toolbox.nn import first_output

class FirstOutput(torch.nn.Module):
    """Wrap a network so that a tuple/list output becomes its first item."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x):
        return first_output(self.network(x))


class ChannelsLast(torch.nn.Module):
    """Hand a network its windows in channels-last layout: oneDNN's convolutions on the CPU
    run 1.2x (3D) to 1.8x (2D) faster on it with the same results (to float rounding), more
    so when the weights are channels-last too (``load_trained_model``)."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x):
        layout = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.ndim)
        return self.network(x.contiguous(memory_format=layout) if layout else x)


def _weights_channels_last(network: torch.nn.Module) -> bool:
    return any(p.ndim == 5 and p.is_contiguous(memory_format=torch.channels_last_3d) and not p.is_contiguous()
               for p in network.parameters())


def to_channels_last(network: torch.nn.Module, spatial_dims: int) -> torch.nn.Module:
    """``network`` with its weights in channels-last layout (in place), for inference."""
    layout = {2: torch.channels_last, 3: torch.channels_last_3d}.get(int(spatial_dims))
    return network.to(memory_format=layout) if layout else network


@torch.no_grad()
def denoise_tensor(
    network: torch.nn.Module,
    image: torch.Tensor,
    roi_size,
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    device: torch.device | str = "cpu",
    autocast_dtype=None,
    window="patch",
) -> torch.Tensor:
    """Denoise one image ``(C, *spatial)`` (normalised) and return it on the CPU.

    ``roi_size`` is the training patch; ``window`` picks the sliding windows from it
    (``toolbox.inference_window.plan_windows``: 'patch' keeps it with ``overlap``, None grows
    it to the whole image within a voxel budget, a tuple is a size); at most
    ``sw_batch_size`` windows, and no more than the budget holds, go through at once."""
    from monai.inferers import SlidingWindowInferer

    from toolbox.inference_window import plan_windows

    device = torch.device(device)
    size = tuple(image.shape[1:])
    plan = plan_windows(roi_size, size, overlap, window)
    roi_size = plan.roi_size
    inferer = SlidingWindowInferer(
        roi_size=roi_size, sw_batch_size=min(sw_batch_size, plan.batch), overlap=plan.overlap,
        mode="gaussian", padding_mode="reflect", sw_device=device, device=torch.device("cpu"),
    )
    was_training = network.training
    network.eval()
    batch = image.unsqueeze(0)
    short = [max(0, r - s) for r, s in zip(roi_size, size)]
    if any(short):
        # MONAI pads small images by reflection, which needs them larger than the pad: an
        # image smaller than half a window (down to one voxel) is edge-padded here instead.
        pads = []
        for n in reversed(short):
            pads.extend([0, n])
        batch = torch.nn.functional.pad(batch, pads, mode="replicate")
    wrapped = FirstOutput(network)
    # 2D windows run faster channels-last whatever the weights' layout; 3D windows only
    # when the weights are too (else 8 % slower: training's validation keeps them as is).
    if image.ndim == 3 or _weights_channels_last(network):
        wrapped = ChannelsLast(wrapped)
    try:
        batch = batch.to(device)
        if autocast_dtype is not None:
            with torch.autocast(device.type, dtype=autocast_dtype):
                out = inferer(batch, wrapped)
        else:
            out = inferer(batch, wrapped)
    finally:
        network.train(was_training)
    # A super-resolution network's output is a whole multiple of its (padded) input.
    scales = [o // b for o, b in zip(out.shape[2:], batch.shape[2:])]
    out = out[(0, slice(None)) + tuple(slice(0, s * k) for s, k in zip(size, scales))]
    return out.float().cpu().contiguous()


# -- applying a trained model to whole volumes ------------------------------------------------
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from toolbox.errors import ToolboxError  # noqa: E402
from toolbox.parts import amp_dtype  # noqa: E402
# The noise-level estimate models are given; it lives with the estimators.
from toolbox.noise_estimation import estimated_sigma, level_noise_spec, trained_on_rician  # noqa: E402,F401


@dataclass
class TrainedModel:
    generator: torch.nn.Module
    recipe: dict
    name: str  # for descriptions: recipe name + checkpoint step
    checkpoint: Path
    sigma: float | None = None  # a noise-conditional model's noise level (image units); None = estimate
    ensemble: int = 1  # test-time self-ensemble size (toolbox.self_ensemble)
    window: object = "patch"  # sliding windows: 'patch', None = whole image within a budget, or a size
    amp: bool = False  # mixed precision (bf16 on the CPU, fp16 on CUDA): faster, slightly less exact
    adapt: int = 0  # steps of test-time adaptation to each image (toolbox.adaptation); 0 = none

    @property
    def spatial_dims(self) -> int:
        return self.recipe["data"]["spatial_dims"]

    @property
    def channels(self) -> int:
        return self.recipe["data"]["channels"]

    @property
    def roi_size(self):
        return self.recipe["data"]["patch_size"]

    @property
    def scale(self) -> int:
        """Super-resolution: the output is this many times larger along each scaled axis."""
        return int(self.recipe["data"].get("scale", 1))

    @property
    def context(self) -> int:
        return self.recipe["data"].get("context_slices", 1)

    @property
    def noise_level_map(self) -> bool:
        return bool(self.recipe["data"].get("noise_level_map", False))


def find_checkpoint(model: Path) -> Path:
    """A run folder gives its best checkpoint (else its last); a file is used as it is."""
    model = Path(model)
    if model.is_dir():
        for name in ("best.pt", "last.pt"):
            candidate = model / "checkpoints" / name
            if candidate.is_file():
                return candidate
        raise ToolboxError(f"{model}: no checkpoints/best.pt or checkpoints/last.pt in this run folder")
    if not model.exists():
        raise ToolboxError(f"{model}: no such run folder or checkpoint file")
    return model


def load_trained_model(model: Path, device: torch.device, registry, inversion: dict | None = None,
                       channels_last: bool = True) -> TrainedModel:
    """A run folder's (or checkpoint file's) generator with its recipe, ready to denoise.

    ``inversion``: settings of the latent search that replace the recipe's (``--inversion``;
    a model with a latent generator only).  ``channels_last``: weights in the layout the
    CPU's convolutions run fastest on (``denoise_tensor`` hands windows over in it too);
    exports keep the default layout."""
    from toolbox.checkpoint import generator_weights, load_checkpoint
    from toolbox.latent_inversion import INVERSION_KEYS, inversion_denoiser, is_latent_generator
    from toolbox.parts import build_generator

    path = find_checkpoint(model)
    payload = load_checkpoint(path)
    recipe = payload["recipe"]
    generator = build_generator(registry, recipe, str(path))
    try:
        generator.load_state_dict(generator_weights(payload))
    except RuntimeError as error:
        raise ToolboxError(f"{path}: the weights do not fit the recipe's generator ({str(error)[:200]})") from error
    generator.to(device).eval()
    if channels_last:
        to_channels_last(generator, recipe["data"]["spatial_dims"])
    # A latent generator denoises by searching its latent space (toolbox.latent_inversion).
    if inversion:
        if not is_latent_generator(generator):
            raise ToolboxError("--inversion sets the latent search of a model whose generator draws from "
                               "latent vectors (scheme unconditional_gan); this model's takes images")
        recipe = {**recipe, "inversion": {**(recipe.get("inversion") or {}), **inversion}}
    try:
        generator = inversion_denoiser(generator, recipe.get("inversion"))
    except (TypeError, ValueError) as error:
        raise ToolboxError(f"inversion settings: {error}; the keys are {', '.join(INVERSION_KEYS)}") from error
    name = f"{recipe.get('name') or 'model'} step {payload.get('step', '?')}"
    return TrainedModel(generator, recipe, name, path)


def _iterate_slices(array: np.ndarray, axis: int, context: int = 1):
    """Every slice along a spatial axis (``toolbox.slicing.slice_with_context``)."""
    from toolbox.slicing import slice_with_context

    for index in range(array.shape[axis + 1]):
        yield index, slice_with_context(array, axis, index, context)


def denoise_array(generator: torch.nn.Module, model_dims: int, roi_size, image: np.ndarray,
                  slice_axis: int | None, device: torch.device, overlap: float = 0.25,
                  progress=None, sw_batch_size: int = 4, autocast_dtype=None,
                  context: int = 1, window="patch") -> np.ndarray:
    """Denoise a normalised ``(C, *spatial)`` image; a 2D model goes slice by slice.

    Slices run along ``slice_axis`` (a spatial axis index; the first axis when None); a
    2.5D model (``context`` > 1) gets each slice with its neighbours.
    """
    dims = image.ndim - 1
    if model_dims == 3 and dims == 2:
        raise ToolboxError("this is a 3D model and the input is a 2D image; use a 2D model")
    if context > 1 and dims != 3:
        raise ToolboxError(f"this 2.5D model needs a 3D volume (stacks of {context} slices)")
    if model_dims == dims:
        out = denoise_tensor(generator, torch.from_numpy(np.ascontiguousarray(image)), roi_size,
                             overlap, sw_batch_size, device, autocast_dtype, window)
        if progress is not None:
            progress(1, 1)
        return out.numpy()
    # 2D model on a 3D volume: one slice at a time keeps memory at one slice's worth.
    axis = 0 if slice_axis is None else slice_axis
    out = None
    total = image.shape[axis + 1]
    for index, plane in _iterate_slices(image, axis, context):
        result = denoise_tensor(generator, torch.from_numpy(np.ascontiguousarray(plane)), roi_size,
                                overlap, sw_batch_size, device, autocast_dtype, window).numpy()
        if out is None:  # the slices' size out (larger for super-resolution)
            out = np.empty((result.shape[0], *np.insert(np.array(result.shape[1:]), axis, total)), image.dtype)
        target = [slice(None)] * out.ndim
        target[axis + 1] = index
        out[tuple(target)] = result
        if progress is not None:
            progress(index + 1, total)
    return out


def denoise_units(generator: torch.nn.Module, model_dims: int, roi_size, norm_spec: dict,
                  units: np.ndarray, slice_axis: int | None, device: torch.device, overlap: float = 0.25,
                  progress=None, autocast_dtype=None, context: int = 1, noise_level_map: bool = False,
                  sigma: float | None = None, ensemble: int = 1, noise_spec=None, window="patch",
                  adapt: int = 0, on_adapted=None) -> np.ndarray:
    """Denoise an image ``(C, *spatial)`` given in its own units and return it in those units.

    The one path from a noisy image to a denoised one that ``denoise``, ``evaluate`` and
    training's validation share: the normaliser is fitted to this (noisy) image, with
    statistics that barely move with the noise (``toolbox.data.normalize``), and inverted on
    the way out; nothing is clipped, so every voxel is denoised.  A noise-conditional
    generator (``noise_level_map``) is given ``sigma`` (the noise SD in the image's units),
    or the level estimated from the image (``estimated_sigma``, told the recipe's training
    ``noise_spec``); ``ensemble`` > 1 averages over flips/rotations.  ``window``: the
    sliding windows (``toolbox.inference_window``: 'patch', None = the whole image within
    a voxel budget, or a size; a generator with ``fixed_input_size`` always gets its patch).
    ``adapt`` > 0: the generator's channel gains are first tuned to this image for that many
    steps (``toolbox.adaptation``), then removed again; ``on_adapted`` receives the
    ``Adaptation`` (what it did).
    """
    from toolbox.adaptation import cross_fitted
    from toolbox.data.normalize import fit_normalizer
    from toolbox.noise_level import NoiseLevelInput
    from toolbox.self_ensemble import SelfEnsemble

    normalizer = fit_normalizer(norm_spec, units)
    normalised = normalizer.forward(units).astype(np.float32)
    network = generator
    if hasattr(network, "in_units_of"):  # a likelihood counting in the image's own units
        network = network.in_units_of(normalizer, units)
    level = None
    if noise_level_map or adapt:
        level = estimated_sigma(units, noise_spec) if sigma is None else float(sigma)
    if noise_level_map:
        network = NoiseLevelInput(network, level / normalizer.scale).train(generator.training)
    if getattr(generator, "fixed_input_size", False):
        window = "patch"

    def run(tuned: torch.nn.Module, report=progress) -> np.ndarray:
        if ensemble > 1:
            tuned = SelfEnsemble(tuned, model_dims, ensemble).train(generator.training)
        return denoise_array(tuned, model_dims, roi_size, normalised, slice_axis, device, overlap,
                             report, autocast_dtype=autocast_dtype, context=context, window=window)

    if adapt:  # one progress count over its passes and tuning steps
        denoised, done = cross_fitted(generator, network, normalised, model_dims, slice_axis, context,
                                      level / normalizer.scale, adapt, torch.device(device), run, progress)
        if on_adapted is not None:
            on_adapted(done)
    else:
        denoised = run(network)
    return normalizer.denoised(denoised).astype(np.float32)


def check_input(model: TrainedModel, shape) -> None:
    """Refuse an image ``(C, *spatial)`` the model cannot take, before any work is shown."""
    if model.channels != shape[0]:
        raise ToolboxError(f"the model takes {model.channels} channel(s), the image has {shape[0]}")
    dims = len(shape) - 1
    if model.spatial_dims == 3 and dims == 2:
        raise ToolboxError("this is a 3D model and the input is a 2D image; use a 2D model")
    if model.context > 1 and dims != 3:
        raise ToolboxError(f"this 2.5D model needs a 3D volume (stacks of {model.context} slices)")


def check_options(model: TrainedModel, sigma: float | None = None, ensemble: int = 1,
                  true_sigma: bool = False, window: str | None = None, amp: bool = False,
                  adapt: int = 0) -> TrainedModel:
    """``model`` set to denoise at noise level ``sigma`` (image units; a noise-conditional
    model only) with a self-ensemble of ``ensemble``, sliding windows ``window`` (the
    ``--window`` text), mixed precision ``amp`` and ``adapt`` steps of test-time adaptation
    to each image, or a one-line error."""
    import dataclasses

    from toolbox.adaptation import check_adaptable

    from toolbox.inference_window import parse_window
    from toolbox.self_ensemble import max_ensemble

    try:
        windows = parse_window(window, model.spatial_dims)
    except ValueError as error:
        raise ToolboxError(str(error)) from error

    if true_sigma and not model.noise_level_map:
        raise ToolboxError("--true-sigma is for noise-conditional models (data.noise_level_map); this one is not")
    if sigma is not None and not model.noise_level_map:
        raise ToolboxError(f"{model.checkpoint}: this model is not noise-conditional, so --sigma has no "
                           "effect (train with data.noise_level_map: true for one that is)")
    if sigma is not None and not (np.isfinite(sigma) and sigma >= 0):
        raise ToolboxError(f"--sigma must be a non-negative noise SD in the image's units, got {sigma}")
    largest = max_ensemble(model.spatial_dims)
    if not 1 <= ensemble <= largest:
        raise ToolboxError(f"--ensemble must be 1..{largest} for a {model.spatial_dims}D model, got {ensemble}")
    if not (isinstance(adapt, (int, np.integer)) and 0 <= adapt <= 100_000):
        raise ToolboxError(f"--adapt must be a number of steps from 0 to 100000, got {adapt}")
    if adapt:
        refusal = check_adaptable(model.generator, model.recipe)
        if refusal:
            raise ToolboxError(f"{model.checkpoint}: {refusal}; run without --adapt")
    return dataclasses.replace(model, sigma=sigma, ensemble=ensemble, window=windows, amp=bool(amp),
                               adapt=int(adapt))


def denoise_with_model(model: TrainedModel, units: np.ndarray, slice_axis: int | None,
                       device: torch.device, overlap: float = 0.25, progress=None,
                       on_adapted=None) -> np.ndarray:
    """``denoise_units`` with a trained model's settings (after ``check_input``)."""
    check_input(model, units.shape)
    return denoise_units(model.generator, model.spatial_dims, model.roi_size, model.recipe["data"]["normalize"],
                         units, slice_axis, device, overlap, progress, context=model.context,
                         noise_level_map=model.noise_level_map, sigma=model.sigma, ensemble=model.ensemble,
                         noise_spec=level_noise_spec(model.recipe["data"]), window=model.window,
                         autocast_dtype=amp_dtype(model.amp, device), adapt=model.adapt,
                         on_adapted=on_adapted)



def denoise_volume(model: TrainedModel, volume, device: torch.device, overlap: float = 0.25,
                   progress=None, on_adapted=None) -> np.ndarray:
    """Denoise a ``Volume`` (as read from a file) and return the result in the input's units;
    voxels the file marks as padding come back exactly as they were."""
    units = denoise_with_model(model, volume.image_values(), volume.slice_axis, device, overlap, progress,
                               on_adapted)
    return volume.restore_padding(units)
