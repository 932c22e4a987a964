"""The public base of training schemes.

A scheme owns the method's logic (which losses, how many discriminator steps, ...); the
training loop (``toolbox.train``) only calls ``train_step`` and saves ``state_dict``.
Adversarial schemes build on ``toolbox.GANScheme`` (``toolbox.gan``).
"""

from __future__ import annotations

import torch

from toolbox.distributed import unwrap
from toolbox.nn import first_output
from toolbox.parts import Parts


class Scheme:
    """Base class of training schemes.

    Subclasses set ``self.generator`` (the network used for validation and inference),
    register their networks and optimizers with ``self.track(...)``, and implement
    ``train_step(batches, step) -> dict[str, Tensor]``: the logged loss terms as detached
    scalar tensors (the loop turns them into numbers only when it logs, so a GPU is not
    made to wait every step), named like ``l_g_pix``, ``l_g_adv``, ``l_d_real``,
    ``l_d_fake``.  ``batches`` holds ``batches_per_step`` batches, each
    ``{"input": x, "target": y}`` on the device.
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

    def train_step(self, batches: list[dict], step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # -- helpers for subclasses ---------------------------------------------------------
    @staticmethod
    def set_base_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
        """Change an optimizer's rate on purpose (a phase of the method); ``train.lr_schedule``
        keeps scaling the new rate."""
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"] = lr

    def sample_grid(self, generator: torch.nn.Module) -> torch.Tensor | None:
        """Images ``(N, C, *spatial)`` in 0..1 that ``generator`` makes on its own, drawn as a
        grid at every validation: an unconditional GAN's samples from fixed latents.  An
        image-to-image scheme has none (its validation figures are the held-out images)."""
        return None

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return dict(self._optimizers)

    def generate(self, source: torch.Tensor) -> torch.Tensor:
        """The generator's (first, full-size) output for ``source``."""
        return first_output(self.generator(source))

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Zero, backward (scaled under fp16), step."""
        optimizer.zero_grad(set_to_none=True)
        scaler = self.parts.scaler
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    @staticmethod
    def requires_grad(module: torch.nn.Module, flag: bool) -> None:
        for p in module.parameters():
            p.requires_grad_(flag)

    @staticmethod
    def logged(terms: dict[str, torch.Tensor], total: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Terms detached for the log (and ``l_g_total`` when ``total`` is given)."""
        out = {k: v.detach() for k, v in terms.items()}
        if total is not None:
            out["l_g_total"] = total.detach()
        return out

    # -- state ---------------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        return dict(self._modules)

    def generator_name(self) -> str:
        """The name under which ``self.generator`` is tracked (its weights in a checkpoint)."""
        for name, module in self._modules.items():
            if module is self.generator:
                return name
        raise ValueError("the scheme's generator is not tracked: call self.track('generator', ...)")

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
