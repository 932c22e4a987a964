"""``Parts``: what a scheme builds from the recipe, on the run's device, from a given registry.

``build_generator`` is the one place a recipe's generator is built (with the inputs the
core injects), for training, ``recipe check`` and inference alike.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from toolbox.distributed import unwrap, wrap_ddp
from toolbox.errors import RecipeError
from toolbox.nn import first_output
from toolbox.registry import Registry


def generator_inputs(recipe: dict) -> dict:
    """What the core injects into a recipe's generator: a 2.5D generator sees
    ``context_slices`` adjacent slices of every channel and returns the middle one; with
    ``data.noise_level_map`` it also gets ``noise_level_map=True`` and one more input
    channel, the last, holding the noise level (``in_channels`` counts the image's only)."""
    data = recipe["data"]
    channels = data["channels"]
    inputs = {"spatial_dims": data["spatial_dims"], "in_channels": channels * data.get("context_slices", 1),
              "out_channels": channels}
    if data.get("noise_level_map"):
        inputs["noise_level_map"] = True
    if data.get("scale", 1) != 1:
        inputs["scale"] = data["scale"]
    return inputs


def output_patch(recipe: dict) -> tuple[int, ...]:
    """The generator's output patch (what a discriminator and the losses see): the input
    patch times ``data.scale``."""
    data = recipe["data"]
    return tuple(int(p) * int(data.get("scale", 1)) for p in data["patch_size"])


def input_channels(recipe: dict) -> int:
    """The channels of the tensor a recipe's generator is called with."""
    inputs = generator_inputs(recipe)
    return inputs["in_channels"] + int(inputs.get("noise_level_map", False))


def build_generator(registry: Registry, recipe: dict, source: str) -> torch.nn.Module:
    """The recipe's generator, built from ``registry`` (on the CPU, untrained)."""
    inputs = generator_inputs(recipe)
    if inputs.get("noise_level_map") and not registry.takes("generators", recipe["generator"],
                                                             "noise_level_map", source, "generator"):
        raise RecipeError(f"generator '{recipe['generator']['type']}' cannot take a noise-level map "
                          "(data.noise_level_map); use one that can, e.g. unet", source, "generator")
    if "scale" in inputs and not registry.takes("generators", recipe["generator"], "scale", source, "generator"):
        raise RecipeError(f"generator '{recipe['generator']['type']}' does not upsample (data.scale: "
                          f"{inputs['scale']}); use one that does, e.g. rrdbnet", source, "generator")
    return registry.build("generators", recipe["generator"], source, "generator", **inputs)


@dataclass
class WeightedLoss:
    module: torch.nn.Module
    weight: float

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self.weight * self.module(*args, **kwargs)


class Parts:
    """Builds the recipe's parts on request, on the run's device.

    ``generator()`` and ``discriminator(in_channels)`` are built once and cached (under
    ``torchrun``, wrapped in DistributedDataParallel: use ``toolbox.unwrap(net)`` to reach
    the network's own attributes);
    ``losses()`` returns name -> ``WeightedLoss``; ``optimizer(role, params)`` builds the
    optimizer the recipe gives under ``optimizers.<role>``.
    """

    def __init__(self, recipe: dict, source: str, device: torch.device, registry: Registry, amp=False,
                 channels_last: bool = False, find_unused_parameters: bool = False):
        self.recipe = recipe
        self.source = source
        self.device = device
        self.spatial_dims = recipe["data"]["spatial_dims"]
        self.channels = recipe["data"]["channels"]
        # A 2.5D generator sees `context_slices` adjacent slices of every channel.
        self.context = recipe["data"].get("context_slices", 1)
        self.registry = registry
        self.amp_dtype = amp_dtype(amp, device)
        self.find_unused = find_unused_parameters  # DDP only
        self.memory_format = (None if not channels_last else
                              torch.channels_last if self.spatial_dims == 2 else torch.channels_last_3d)
        # fp16 needs loss scaling; bf16 has fp32's range and does not.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype is torch.float16)
        self._generator = None
        self._discriminator = None
        self._discriminator_channels = 0

    def generator(self) -> torch.nn.Module:
        if self._generator is None:
            self._generator = build_generator(self.registry, self.recipe, self.source).to(self.device)
            self._generator = wrap_ddp(self._prepare(self._generator), self.device, self.find_unused)
        return self._generator

    def discriminator(self, in_channels: int) -> torch.nn.Module:
        if self._discriminator is None:
            spec = self.recipe.get("discriminator")
            if not spec:
                raise RecipeError(
                    f"scheme '{self.recipe['scheme']['type']}' needs a discriminator",
                    self.source, "discriminator",
                )
            self._discriminator = self.registry.build(
                "discriminators", spec, self.source, "discriminator",
                spatial_dims=self.spatial_dims, in_channels=in_channels,
            ).to(self.device)
            self._discriminator_channels = in_channels
            self._discriminator = wrap_ddp(self._prepare(self._discriminator), self.device, self.find_unused)
        return self._discriminator

    def check_networks(self) -> None:
        """One forward pass of each network built so far on a patch of ``data.patch_size``
        (called before training and by ``recipe check``), so that a network that cannot take
        such patches (a thin 3D slab through a deep discriminator) is a one-line recipe
        error, not a torch error at the first step."""
        from toolbox.latent_inversion import is_latent_generator

        generator = unwrap(self._generator) if self._generator is not None else None
        if generator is not None and is_latent_generator(generator):
            self._check_latent_generator(generator)
        elif generator is not None:
            out = self._check_patch(unwrap(self._generator), "generator", input_channels(self.recipe),
                                    tuple(self.recipe["data"]["patch_size"]))
            expected = output_patch(self.recipe)
            if tuple(out.shape[2:]) != expected:
                raise RecipeError(f"the generator turns a {'x'.join(map(str, self.recipe['data']['patch_size']))} "
                                  f"patch into {'x'.join(map(str, out.shape[2:]))}, not "
                                  f"{'x'.join(map(str, expected))} (data.patch_size x data.scale)",
                                  self.source, "generator")
        if self._discriminator is not None:
            self._check_patch(unwrap(self._discriminator), "discriminator", self._discriminator_channels,
                              output_patch(self.recipe))

    def _check_latent_generator(self, generator: torch.nn.Module) -> None:
        """A generator drawing from latent vectors must draw images of the training patches'
        size (the discriminator sees both; denoising tiles images into such windows)."""
        was_training = generator.training
        generator.eval()
        try:
            with torch.no_grad():
                out = first_output(generator(torch.zeros(1, int(generator.latent_dim), device=self.device)))
        finally:
            generator.train(was_training)
        patch = tuple(int(p) for p in self.recipe["data"]["patch_size"])
        if tuple(out.shape[1:]) != (self.channels, *patch):
            raise RecipeError(f"the generator draws images of {'x'.join(map(str, out.shape[2:]))} with "
                              f"{out.shape[1]} channel(s); data.patch_size is {'x'.join(map(str, patch))} with "
                              f"{self.channels}: make the generator's image_size the patch size",
                              self.source, "generator")

    def _check_patch(self, network: torch.nn.Module, role: str, in_channels: int, patch) -> torch.Tensor:
        was_training = network.training
        network.eval()  # batch statistics of one sample would fail on a 1x1 map
        try:
            with torch.no_grad():
                return first_output(network(torch.zeros(1, in_channels, *patch, device=self.device)))
        except (RuntimeError, ValueError) as error:
            reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            which = "data.patch_size" if self.recipe["data"].get("scale", 1) == 1 or role == "generator" \
                else "data.patch_size x data.scale"
            raise RecipeError(f"cannot take patches of {'x'.join(map(str, patch))} ({which}): "
                              f"{reason}", self.source, role) from error
        finally:
            network.train(was_training)

    def _prepare(self, network: torch.nn.Module) -> torch.nn.Module:
        if self.memory_format is not None:
            network = network.to(memory_format=self.memory_format)
        return network

    def input_image(self, source: torch.Tensor) -> torch.Tensor:
        """The noisy image in a generator input ``(N, C*k [+1], ...)``: each channel's middle
        slice of a 2.5D stack, without the noise-level channel (what a conditional
        discriminator pairs with the output)."""
        k = self.context
        return source[:, [c * k + k // 2 for c in range(self.channels)]]

    def to_device(self, batch: dict) -> dict:
        """A batch of tensors on the run's device, in the memory layout the networks use."""
        moved = {}
        for key, value in batch.items():
            value = value.to(self.device, non_blocking=True)
            if self.memory_format is not None and value.dim() == self.spatial_dims + 2:
                value = value.contiguous(memory_format=self.memory_format)
            moved[key] = value
        return moved

    def losses(self) -> dict[str, WeightedLoss]:
        built = {}
        for name, spec in self.recipe["losses"].items():
            module = self.registry.build("losses", spec, self.source, f"losses.{name}")
            check = getattr(module, "check_patch", None)
            if callable(check):  # a loss that cannot take the recipe's patches says so now
                try:
                    check(output_patch(self.recipe))
                except ValueError as error:
                    raise RecipeError(str(error), self.source, f"losses.{name}") from error
            if isinstance(module, torch.nn.Module):
                module = module.to(self.device)
            built[name] = WeightedLoss(module, float(spec.get("weight", 1.0)))
        return built

    def optimizer(self, role: str, params) -> torch.optim.Optimizer:
        specs = self.recipe["optimizers"]
        if role not in specs:
            raise RecipeError(
                f"scheme '{self.recipe['scheme']['type']}' needs an optimizer for '{role}' "
                f"(e.g. optimizers.{role}: {{type: adam, lr: 1e-4}})", self.source, "optimizers",
            )
        return self.registry.build(
            "optimizers", specs[role], self.source, f"optimizers.{role}", params=params
        )

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def amp_dtype(amp, device: torch.device):
    """The autocast type of ``train.amp`` / ``--amp`` on ``device`` (None: full precision)."""
    if amp in (False, None):
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    # amp: true -> the usual choice for the device
    return torch.float16 if torch.device(device).type == "cuda" else torch.bfloat16
