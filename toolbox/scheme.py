"""The public base of training schemes, and ``Parts``: what a scheme builds from the recipe.

A scheme owns the method's logic (which losses, how many discriminator steps, ...); the
training loop (``toolbox.train``) only calls ``train_step`` and saves ``state_dict``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from toolbox.distributed import unwrap, wrap_ddp
from toolbox.errors import RecipeError


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

    def __init__(self, recipe: dict, source: str, device: torch.device, amp=False,
                 channels_last: bool = False, find_unused_parameters: bool = False):
        from toolbox.plugins import get_registry

        self.recipe = recipe
        self.source = source
        self.device = device
        self.spatial_dims = recipe["data"]["spatial_dims"]
        self.channels = recipe["data"]["channels"]
        # A 2.5D generator sees `context_slices` adjacent slices of every channel.
        self.context = recipe["data"].get("context_slices", 1)
        self.registry = get_registry()
        self.amp_dtype = _amp_dtype(amp, device)
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
            self._generator = self.registry.build(
                "generators", self.recipe["generator"], self.source, "generator",
                spatial_dims=self.spatial_dims, in_channels=self.channels * self.context,
                out_channels=self.channels,
            ).to(self.device)
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
        if self._generator is not None:
            self._check_patch(unwrap(self._generator), "generator", self.channels * self.context)
        if self._discriminator is not None:
            self._check_patch(unwrap(self._discriminator), "discriminator", self._discriminator_channels)

    def _check_patch(self, network: torch.nn.Module, role: str, in_channels: int) -> None:
        patch = tuple(self.recipe["data"]["patch_size"])
        was_training = network.training
        network.eval()  # batch statistics of one sample would fail on a 1x1 map
        try:
            with torch.no_grad():
                network(torch.zeros(1, in_channels, *patch, device=self.device))
        except (RuntimeError, ValueError) as error:
            reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            raise RecipeError(f"cannot take patches of {'x'.join(map(str, patch))} (data.patch_size): "
                              f"{reason}", self.source, role) from error
        finally:
            network.train(was_training)

    def _prepare(self, network: torch.nn.Module) -> torch.nn.Module:
        if self.memory_format is not None:
            network = network.to(memory_format=self.memory_format)
        return network

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
                    check(tuple(self.recipe["data"]["patch_size"]))
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


def _amp_dtype(amp, device: torch.device):
    if amp in (False, None):
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    # amp: true -> the usual choice for the device
    return torch.float16 if device.type == "cuda" else torch.bfloat16


class Scheme:
    """Base class of training schemes.

    Subclasses set ``self.generator`` (the network used for validation and inference),
    register their networks and optimizers with ``self.track(...)``, and implement
    ``train_step(batches, step) -> dict[str, float]`` (the logged loss terms, named like
    ``l_g_pix``, ``l_g_adv``, ``l_d_real``, ``l_d_fake``).  ``batches`` holds
    ``batches_per_step`` batches, each ``{"input": x, "target": y}`` on the device.
    """

    batches_per_step: int = 1

    def __init__(self, parts: Parts):
        self.parts = parts
        self.generator: torch.nn.Module | None = None
        self._modules: dict[str, torch.nn.Module] = {}
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self._generators: dict[str, torch.Generator] = {}

    def track(self, name: str, part) -> None:
        """Save and restore ``part`` with the checkpoints: a network, an optimizer, or a
        ``torch.Generator`` the scheme draws random numbers from (so a resumed run repeats)."""
        if isinstance(part, torch.optim.Optimizer):
            self._optimizers[name] = part
        elif isinstance(part, torch.Generator):
            self._generators[name] = part
        else:
            self._modules[name] = part

    def train_step(self, batches: list[dict], step: int) -> dict[str, float]:
        raise NotImplementedError

    # -- helpers for subclasses ---------------------------------------------------------
    def build_adversarial_pair(self, discriminator_channels: int) -> None:
        """Build and track the generator, the discriminator and their optimizers
        (``optimizers.generator`` / ``optimizers.discriminator``) as ``self.generator``,
        ``self.discriminator``, ``self.opt_g`` and ``self.opt_d``."""
        self.generator = self.parts.generator()
        self.discriminator = self.parts.discriminator(discriminator_channels)
        self.opt_g = self.parts.optimizer("generator", self.generator.parameters())
        self.opt_d = self.parts.optimizer("discriminator", self.discriminator.parameters())
        for name, part in (("generator", self.generator), ("discriminator", self.discriminator),
                           ("generator", self.opt_g), ("discriminator", self.opt_d)):
            self.track(name, part)

    def split_adversarial(self, name: str, example: str) -> tuple[WeightedLoss, dict]:
        """The recipe's losses split into the adversarial criterion ``losses.<name>`` and the
        rest (content losses); a clear recipe error when it is missing."""
        losses = self.parts.losses()
        if name not in losses:
            scheme = self.parts.recipe["scheme"]["type"]
            raise RecipeError(
                f"scheme '{scheme}' needs the adversarial loss under losses.{name} (e.g. {example}); "
                f"found {', '.join(losses) or 'none'}", self.parts.source, "losses")
        return losses.pop(name), losses

    def generate(self, source: torch.Tensor) -> torch.Tensor:
        """The generator's (first, full-size) output for ``source``."""
        output = self.generator(source)
        return output[0] if isinstance(output, (tuple, list)) else output

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Zero, backward (scaled under fp16), step."""
        optimizer.zero_grad(set_to_none=True)
        scaler = self.parts.scaler
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def adversarial_generator_step(self, batch: dict, discriminator: torch.nn.Module,
                                   adversarial: WeightedLoss, adversarial_name: str,
                                   content: dict, optimizer: torch.optim.Optimizer,
                                   pair=None) -> dict[str, float]:
        """One generator update: fool ``discriminator`` and match the target.

        Terms are logged as ``l_g_<name>`` (``adversarial_name`` for the adversarial one) and
        ``l_g_total``.  ``pair(source, image)`` builds what the discriminator sees (the image
        alone by default; a conditional scheme concatenates the source).
        """
        pair = pair or (lambda source, image: image)
        self.requires_grad(discriminator, False)
        with self.parts.autocast():
            fake = self.generate(batch["input"])
            judged = discriminator(pair(batch["input"], fake))
        terms = {f"l_g_{adversarial_name}": adversarial.weight
                 * adversarial.module(judged, True, for_discriminator=False)}
        for name, loss in content.items():
            terms[f"l_g_{name}"] = loss(fake.float(), batch["target"])
        total = sum(terms.values())
        self.backward_step(total, optimizer)
        self.requires_grad(discriminator, True)
        logged = {k: v.item() for k, v in terms.items()}
        logged["l_g_total"] = total.item()
        return logged

    @staticmethod
    def requires_grad(module: torch.nn.Module, flag: bool) -> None:
        for p in module.parameters():
            p.requires_grad_(flag)

    # -- state ---------------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        return dict(self._modules)

    def state_dict(self) -> dict:
        return {
            "modules": {k: unwrap(m).state_dict() for k, m in self._modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self._optimizers.items()},
            "generators": {k: g.get_state() for k, g in self._generators.items()},
            "scaler": self.parts.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        for k, m in self._modules.items():
            unwrap(m).load_state_dict(state["modules"][k])
        for k, o in self._optimizers.items():
            if k in state.get("optimizers", {}):
                o.load_state_dict(state["optimizers"][k])
        for k, g in self._generators.items():
            if k in state.get("generators", {}):
                g.set_state(state["generators"][k])
        if state.get("scaler"):
            self.parts.scaler.load_state_dict(state["scaler"])

    def train(self, mode: bool = True) -> None:
        for m in self._modules.values():
            m.train(mode)
