"""Training patches and held-out images, built from a recipe's ``data`` section.

Every random choice of sample ``i`` (which image, where to crop, flips, the noise) comes
from generators seeded with ``(seed, i)``.  Sample ``i`` is therefore the same whatever
the number of workers or processes, and a resumed run sees exactly the samples it would
have seen.

Images are read like ``toolbox denoise`` reads them (``toolbox.data.volumes``), so a model
sees the same orientation in training and in use; ``data.reader`` picks a MONAI reader
instead.  A 2D recipe may train on 3D volumes: they contribute their slices.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from toolbox.data.normalize import Normalizer, data_range, describe_range, fit_normalizer
from toolbox.data.readers import read_image
from toolbox.data.volumes import Volume, expand_inputs, formats_of, read_volume, squeeze_spacing, squeeze_spatial
from toolbox.errors import ToolboxError
from toolbox.recipe import train_sources
from toolbox.noise_level import measured_level, rms_difference, with_level_channel


@dataclass
class HeldOut:
    """One whole held-out image, clean and noisy, in the input's own units (HU for CT).

    Validation denoises ``noisy`` exactly as ``toolbox denoise`` would (its own normaliser,
    fitted to the noisy image) and scores the result against ``clean`` in these units over
    the whole image, with ``data_range``.
    """

    name: str
    clean: np.ndarray  # (C, *spatial), singleton spatial axes dropped
    noisy: np.ndarray
    data_range: float
    display: Normalizer  # maps the clean image to 0..1 for figures
    slice_axis: int | None = None  # for a 2D model on a 3D held-out volume
    volume: Volume | None = None  # the file as read (template for writing outputs)
    true_sigma: float | None = None  # the noise SD when noisy - clean cannot tell (super-resolution)

    @property
    def scale(self) -> int:
        """Super-resolution: how many times larger the clean image is than the noisy input."""
        return self.clean.shape[-1] // self.noisy.shape[-1]

    def noisy_on_clean_grid(self) -> np.ndarray:
        """The noisy input on the clean image's grid (cubic interpolation when it is smaller):
        what "do nothing" means for a super-resolution model."""
        from toolbox.resolution import upsample

        return upsample(self.noisy, self.clean.shape[1:])


def _pad_to(array: np.ndarray, size) -> np.ndarray:
    pads = [(0, 0)] + [(0, max(0, s - a)) for a, s in zip(array.shape[1:], size)]
    if any(p[1] for p in pads):
        try:
            return np.pad(array, pads, mode="reflect")
        except ValueError:  # reflection needs the image larger than the pad
            return np.pad(array, pads, mode="edge")
    return array


def _sample_generators(seed: int, index: int) -> tuple[np.random.Generator, torch.Generator]:
    rng = np.random.default_rng([seed, index])
    noise = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    return rng, noise


class PatchDataset(torch.utils.data.Dataset):
    """Random patches of normalised clean images with synthetic noise: {input, target}.

    Or, for paired data, the same crop of a noisy image and its clean counterpart.
    """

    def __init__(self, clean, patch_size, seed, noise=None, noisy=None, augment=True, length=None,
                 context: int = 1, normalizers=None, noisy_target: bool = False, noise_level_map: bool = False,
                 reference_levels=None, scale: int = 1):
        # Normalised float32 arrays (C, *spatial); for 2.5D (context > 1) volumes (C, S, H, W)
        # with the slice axis first, giving a stack of `context` slices around a middle one.
        self.context = context
        self.clean = clean
        self.noisy = noisy  # same shapes, or None for synthetic noise
        self.patch_size = tuple(patch_size)
        self.seed = seed
        self.noise = noise
        # A noise model in the images' own units (a calibrated camera) gets each patch mapped
        # back to them with its image's normaliser.
        self.normalizers = normalizers if in_units(noise) else None
        self.augment = augment
        self.noisy_target = noisy_target  # Noise2Noise on synthetic data: a second, independent draw
        self.noise_level_map = noise_level_map  # append the patch's noise level as a last input channel
        # The clean images' own noise (normalised units), added to the measured level so that
        # training gives the level the estimate will see in use (``data.reference_noise``).
        self.reference_levels = reference_levels
        self.scale = scale  # super-resolution: the target is `scale` times the input's size
        sizes = np.array([float(np.prod(a.shape[1:])) for a in clean])
        self.weights = sizes / sizes.sum()  # large images give proportionally more patches
        self.length = length or 2**31 - 1

    def _noisy(self, stack: torch.Tensor, which: int, generator: torch.Generator) -> torch.Tensor:
        if self.normalizers is None:
            return self.noise(stack, generator).float()
        normalizer = self.normalizers[which]
        return normalizer.forward(self.noise(normalizer.inverse(stack), generator)).float()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        rng, noise_generator = _sample_generators(self.seed, index)
        which = int(rng.choice(len(self.clean), p=self.weights))
        clean, noisy = self.clean[which], self.noisy[which] if self.noisy is not None else None
        if self.context > 1:  # pick a middle slice; its neighbours (edges repeated) ride along
            half = self.context // 2
            middle = int(rng.integers(0, clean.shape[1]))
            rows = np.clip(np.arange(middle - half, middle + half + 1), 0, clean.shape[1] - 1)
            clean = clean[:, rows]
            noisy = noisy[:, rows] if noisy is not None else None
        lead = clean.ndim - 1 - len(self.patch_size)  # the stack axis, if any, is not cropped
        # Crops on the input's grid; with super-resolution the target's window is `scale`
        # times larger at the same place (synthetic noise: the clean crop is the large one,
        # made small by the noise model).
        scale = self.scale
        in_patch = self.patch_size if noisy is not None else tuple(p * scale for p in self.patch_size)
        grid = noisy if noisy is not None else clean
        grid = _pad_to(grid, tuple(grid.shape[1:1 + lead]) + in_patch)
        starts = [int(rng.integers(0, s - p + 1)) for s, p in zip(grid.shape[1 + lead:], in_patch)]
        window = (slice(None),) * (1 + lead) + tuple(slice(s, s + p) for s, p in zip(starts, in_patch))
        if noisy is not None:
            noisy = grid[window]
            factor = scale  # the clean image is `scale` times the noisy one
            clean = _pad_to(clean, tuple(clean.shape[1:1 + lead]) + tuple(p * factor for p in grid.shape[1 + lead:]))
            clean = clean[(slice(None),) * (1 + lead)
                          + tuple(slice(s * factor, (s + p) * factor) for s, p in zip(starts, in_patch))]
        else:
            clean = grid[window]
        if self.augment:
            # Flips along every axis and (in-plane) 90-degree turns when the patch is square.
            for axis in range(1, clean.ndim):
                if rng.random() < 0.5:
                    clean = np.flip(clean, axis)
                    noisy = np.flip(noisy, axis) if noisy is not None else None
            if self.patch_size[-1] == self.patch_size[-2]:
                turns = int(rng.integers(0, 4))
                clean = np.rot90(clean, turns, axes=(-2, -1))
                noisy = np.rot90(noisy, turns, axes=(-2, -1)) if noisy is not None else None
        stack = torch.from_numpy(np.ascontiguousarray(clean, dtype=np.float32))
        if noisy is None:
            source = self._noisy(stack, which, noise_generator)
            if tuple(source.shape[-len(self.patch_size):]) != self.patch_size:
                raise ToolboxError(
                    f"the noise model turned a {'x'.join(map(str, stack.shape[1:]))} patch into "
                    f"{'x'.join(map(str, source.shape[1:]))}; with data.scale {scale} it must return "
                    f"{'x'.join(map(str, self.patch_size))} (e.g. {{type: sr_degradation, scale: {scale}}})")
        else:
            source = torch.from_numpy(np.ascontiguousarray(noisy, dtype=np.float32))
        level = measured_level(source, stack) if self.noise_level_map else None
        if level is not None and self.reference_levels is not None:
            level = float(np.hypot(level, self.reference_levels[which]))
        if noisy is None and self.noisy_target:  # the same patch again, with independent noise
            stack = self._noisy(stack, which, noise_generator)
        target = stack
        if self.context > 1:  # (C, k, h, w) -> input (C*k, h, w), target the middle (C, h, w)
            target = stack[:, self.context // 2]
            source = source.reshape(-1, *source.shape[2:])
        if level is not None:
            source = with_level_channel(source, level)
        return {"input": source, "target": target}


@dataclass
class DataBundle:
    train: PatchDataset
    held_out: list[HeldOut]
    spatial_dims: int
    channels: int
    data_range_note: str
    formats: list = field(default_factory=list)  # the registered formats (to write images back)


@dataclass
class Loaded:
    array: np.ndarray  # (C, *spatial), singletons dropped
    slice_axis: int | None
    path: Path
    volume: Volume | None
    spacing: tuple | None = None  # mm per axis of ``array``


def _load(path: Path, data: dict, reader, formats) -> Loaded:
    dims, channels = data["spatial_dims"], data["channels"]
    if reader is not None:  # an explicitly named MONAI reader
        image = read_image(path, dims, channels, reader)
        return Loaded(image.array, None, path, None, _monai_spacing(image.meta, image.array.ndim - 1))
    volume = read_volume(path, formats, channels=channels)
    if volume.array.shape[0] != channels:
        raise ToolboxError(f"{path}: has {volume.array.shape[0]} channels, the recipe expects "
                           f"{channels} (data.channels)")
    # Padding (outside a CT's field of view) is not image: train on it as the darkest value.
    array, slice_axis = squeeze_spatial(volume.image_values(), volume.slice_axis, min_axes=dims)
    if array.ndim - 1 < dims or (dims == 3 and array.ndim - 1 != 3):
        raise ToolboxError(f"{path}: has shape {volume.array.shape[1:]}; a {dims}D recipe needs "
                           f"{dims} spatial axes")
    return Loaded(array, slice_axis, path, volume, squeeze_spacing(volume.image_values(), volume.spacing, dims))


def _monai_spacing(meta: dict, dims: int) -> tuple | None:
    spacing = meta.get("pixdim", meta.get("spacing"))
    if spacing is None:
        return None
    values = [float(v) for v in np.asarray(spacing).ravel()]
    values = values[1:] if len(values) == 8 else values  # NIfTI pixdim[0] is the qfac
    return tuple(values[:dims]) if len(values) >= dims else None


def _training_images(loaded: Loaded, dims: int, context: int = 1) -> list[np.ndarray]:
    """The 2D or 3D images a file contributes: itself, or its slices for a 2D recipe;
    for 2.5D, the volume with its slice axis first (C, S, H, W)."""
    axis = 1 + (loaded.slice_axis if loaded.slice_axis is not None else 0)
    if context > 1:
        if loaded.array.ndim != 4:
            raise ToolboxError(f"{loaded.path}: 2.5D training (data.context_slices: {context}) "
                               "needs 3D volumes or image stacks")
        return [np.ascontiguousarray(np.moveaxis(loaded.array, axis, 1))]
    if loaded.array.ndim - 1 == dims:
        return [loaded.array]
    return [np.take(loaded.array, i, axis=axis) for i in range(loaded.array.shape[axis])]


def build_data(recipe: dict, registry, source: str = "recipe") -> DataBundle:
    """The training patches and held-out images a recipe describes (readers and noise
    models built from ``registry``)."""
    data = recipe["data"]
    dims = data["spatial_dims"]
    context = data.get("context_slices", 1)
    reader = registry.build("readers", data["reader"], source, "data.reader") if data.get("reader") else None
    noise = registry.build("noise_models", data["noise"], source, "data.noise") if data.get("noise") else None
    formats = formats_of(registry)
    seed = int(recipe["seed"])
    norm_spec = data["normalize"]

    paired = data.get("paired") or {}
    noisy_train, noisy_val = None, None
    if paired.get("train_noisy"):
        noisy_train, clean_train = _read_paired(paired, "train", data, reader, formats)
        train_specs = [norm_spec] * len(clean_train)
    else:  # each entry of data.train with its normalisation (toolbox.recipe.train_sources)
        sourced = [(path, spec) for paths, spec in train_sources(data) for path in expand_inputs(paths, formats)]
        clean_train = [_load(path, data, reader, formats) for path, _ in sourced]
        train_specs = [spec for _, spec in sourced]
    if paired.get("val_noisy"):
        noisy_val, clean_val = _read_paired(paired, "val", data, reader, formats)
    else:  # held-out clean images, given synthetic noise
        clean_val = ([_load(p, data, reader, formats) for p in expand_inputs(data["val"], formats)]
                     if data.get("val") else [])

    if noise is not None and is_whole_image(noise) and noisy_train is None:
        copies = int(data["noise_copies"])
        noisy_train, clean_train = _whole_image_copies(noise, clean_train, copies, seed)
        train_specs = [spec for spec in train_specs for _ in range(copies)]
    train_arrays, train_noisy, normalizers = [], ([] if noisy_train is not None else None), []
    if data["frame_pairs"]:  # Noise2Noise on a time series: frame t in, frame t + 1 as the target
        train_arrays, train_noisy, normalizers = _frame_pairs(clean_train, norm_spec, dims)
        clean_train = []
    for index, loaded in enumerate(clean_train):
        # Paired data: normalise both with the noisy image's statistics, as at inference.
        reference = noisy_train[index].array if noisy_train is not None else loaded.array
        normalizer = fit_normalizer(train_specs[index], reference)
        images = _training_images(loaded, dims, context)
        train_arrays.extend(normalizer.forward(a).astype(np.float32) for a in images)
        normalizers.extend(normalizer for _ in images)
        if noisy_train is not None:
            train_noisy.extend(normalizer.forward(a).astype(np.float32)
                               for a in _training_images(noisy_train[index], dims, context))
    if not train_arrays:
        raise ToolboxError(f"{source}: no training images (data.train)")
    no_clean = train_noisy is None and (noise is None or getattr(noise, "identity", False))
    if data["noise_level_map"] and (no_clean or data["frame_pairs"]):
        raise ToolboxError(f"{source}: data.noise_level_map measures the noise of each training patch "
                           "against its clean image; give clean images with a noise model, or paired data")
    reference_levels = None
    if data.get("reference_noise"):  # each clean image's own noise, as the estimate in use would read it
        from toolbox.noise_estimation import estimated_sigma, level_noise_spec

        reference_levels = [estimated_sigma(a, level_noise_spec(data)) for a in train_arrays]
    train = PatchDataset(train_arrays, data["patch_size"], seed, noise, train_noisy, data["augment"],
                         context=context, normalizers=normalizers, noisy_target=data["target"] == "noisy_copy",
                         noise_level_map=data["noise_level_map"], reference_levels=reference_levels,
                         scale=int(data.get("scale", 1)))

    held_out = []
    scale = int(data.get("scale", 1))
    for index, loaded in enumerate(clean_val):
        clean = loaded.array.astype(np.float32)
        if scale > 1 and clean.ndim - 1 != dims:
            raise ToolboxError(f"{loaded.path}: super-resolution (data.scale) validates on {dims}D images; "
                               f"this one has shape {clean.shape[1:]}")
        if scale > 1 and not noisy_val:  # the degradation bins scale x scale blocks: whole blocks only
            clean = clean[(slice(None),) + scaled_axes_crop(clean.shape[1:], scale, dims, loaded.slice_axis)]
        display = fit_normalizer(norm_spec, clean)
        if noisy_val:
            noisy = noisy_val[index].array.astype(np.float32)
        else:
            generator = torch.Generator().manual_seed(int(data["val_seed"]) + index)
            noisy = noisy_in_units(noise, clean, display, generator, loaded.spacing, loaded.slice_axis,
                                   where=loaded.path)
        true_sigma = degradation_noise_sd(noise, clean, noisy, display, int(data["val_seed"]) + index)
        held_out.append(HeldOut(loaded.path.name, clean, noisy, data_range(norm_spec, clean), display,
                                loaded.slice_axis, loaded.volume, true_sigma))
    note = describe_range(norm_spec)
    return DataBundle(train, held_out, dims, data["channels"], note, formats)


def in_units(noise) -> bool:
    """A noise model that takes values in the images' own units (``units = "native"``)."""
    return getattr(noise, "units", None) == "native" or is_whole_image(noise)


def is_whole_image(noise) -> bool:
    """A noise model that acts on whole images in their own units (``whole_image = True``)."""
    return bool(getattr(noise, "whole_image", False))


def _whole_image_copies(noise, images: list[Loaded], copies: int, seed: int):
    """(noisy, clean) lists: whole-image noise (low-dose CT) is too slow to draw per patch,
    so every training image gets ``copies`` noisy copies once, each from its own seed."""
    noisy = [dataclasses.replace(loaded, array=noisy_in_units(
        noise, loaded.array, None, torch.Generator().manual_seed(seed * 1_000_003 + index * 1009 + copy),
        loaded.spacing, loaded.slice_axis, where=loaded.path)) for index, loaded in enumerate(images)
        for copy in range(copies)]
    return noisy, [loaded for loaded in images for _ in range(copies)]


def _frame_pairs(stacks: list[Loaded], norm_spec: dict, dims: int):
    """(targets, inputs, normalisers): frame t + 1 and frame t of every stack, normalised
    together (both are noisy acquisitions of the same scene)."""
    targets, inputs, normalizers = [], [], []
    for loaded in stacks:
        frames = _training_images(loaded, dims)
        if len(frames) < 2:
            raise ToolboxError(f"{loaded.path}: data.frame_pairs needs a stack of at least 2 frames")
        normalizer = fit_normalizer(norm_spec, loaded.array)
        inputs += [normalizer.forward(f).astype(np.float32) for f in frames[:-1]]
        targets += [normalizer.forward(f).astype(np.float32) for f in frames[1:]]
        normalizers += [normalizer] * (len(frames) - 1)
    return targets, inputs, normalizers


def noisy_in_units(noise, clean: np.ndarray, normalizer: Normalizer | None, generator: torch.Generator,
                   spacing=None, slice_axis: int | None = None, where="image") -> np.ndarray:
    """A synthetic noisy copy of ``clean`` (in its own units).  A whole-image model gets the
    image in its units with its spacing; for the others the noise level is defined in
    normalised units, as in training, so the noise is added to the normalised clean image
    and the result mapped back to the image's units."""
    if is_whole_image(noise):
        try:
            noisy = noise(torch.from_numpy(np.ascontiguousarray(clean, dtype=np.float32)), generator,
                          spacing=spacing, slice_axis=slice_axis)
        except ValueError as error:
            raise ToolboxError(f"{where}: {error}") from error
        return noisy.float().numpy()
    if in_units(noise):
        return noise(torch.from_numpy(np.ascontiguousarray(clean, dtype=np.float32)), generator).float().numpy()
    normalised = torch.from_numpy(normalizer.forward(clean).astype(np.float32))
    return normalizer.inverse(noise(normalised, generator).float().numpy()).astype(np.float32)


def degradation_noise_sd(noise, clean: np.ndarray, noisy: np.ndarray, normalizer: Normalizer,
                         seed: int) -> float | None:
    """The true noise SD (image units) of a noisy input that a degradation model made smaller
    than ``clean`` (super-resolution), where noisy - clean cannot say: against the model's
    ``noise_free`` output drawn with the same seed.  None when it does not apply."""
    if noisy.shape == clean.shape or not callable(getattr(noise, "noise_free", None)):
        return None
    normalised = torch.from_numpy(normalizer.forward(clean).astype(np.float32))
    free = noise.noise_free(normalised, torch.Generator().manual_seed(seed)).float().numpy()
    return rms_difference(noisy, normalizer.inverse(free))


def scaled_axes(shape, dims: int, slice_axis: int | None) -> list[bool]:
    """Which spatial axes a model of ``dims`` dimensions scales: all of them, except the
    slice axis when a 2D model goes through a 3D volume slice by slice."""
    if len(shape) == dims:
        return [True] * len(shape)
    axis = 0 if slice_axis is None else slice_axis
    return [i != axis for i in range(len(shape))]


def scaled_shape(shape, scale: int, dims: int, slice_axis: int | None = None) -> tuple[int, ...]:
    """The output shape of a ``scale`` x model on an input of spatial ``shape``."""
    return tuple(s * scale if on else s for s, on in zip(shape, scaled_axes(shape, dims, slice_axis)))


def scaled_axes_crop(shape, scale: int, dims: int, slice_axis: int | None = None) -> tuple[slice, ...]:
    """Slices that trim the scaled axes of ``shape`` to whole multiples of ``scale``."""
    return tuple(slice(0, s - s % scale if on else s) for s, on in zip(shape, scaled_axes(shape, dims, slice_axis)))


def _read_paired(paired: dict, split: str, data: dict, reader, formats):
    noisy_files = expand_inputs(paired.get(f"{split}_noisy") or [], formats)
    clean_files = expand_inputs(paired.get(f"{split}_clean") or [], formats)
    clean_by_name = {f.name: f for f in clean_files}
    missing = [f.name for f in noisy_files if f.name not in clean_by_name]
    if missing:
        raise ToolboxError(
            f"data.paired.{split}_clean: no clean image named like the noisy "
            f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} (pairs match by file name)"
        )
    noisy, clean = [], []
    scale = int(data.get("scale", 1))
    for f in noisy_files:
        n = _load(f, data, reader, formats)
        c = _load(clean_by_name[f.name], data, reader, formats)
        expected = scaled_shape(n.array.shape[1:], scale, data["spatial_dims"], n.slice_axis)
        if tuple(c.array.shape[1:]) != expected or n.array.shape[0] != c.array.shape[0]:
            wanted = f"{'x'.join(map(str, expected))} (data.scale {scale})" if scale > 1 else "the same"
            raise ToolboxError(
                f"{f}: shape {n.array.shape[1:]}; its clean image {clean_by_name[f.name]} is "
                f"{c.array.shape[1:]}, expected {wanted}"
            )
        noisy.append(n)
        clean.append(c)
    return noisy, clean
