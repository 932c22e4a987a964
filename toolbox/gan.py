"""``GANScheme``: the public base of adversarial schemes, with the steps they share.

A subclass says only what makes its method different: what the discriminator is shown
(``pair``), the discriminator's loss (``discriminator_terms`` / ``discriminator_loss``),
the generator's fidelity terms (``fidelity``) and when each network trains.  Mixed
precision (autocast, fp16 loss scaling) and DDP (wrapped networks, ``requires_grad``
toggled so that DDP never waits for gradients that will not come) are handled here once.
"""

from __future__ import annotations

import torch

from toolbox.errors import RecipeError
from toolbox.nn import all_outputs
from toolbox.parts import Parts, WeightedLoss
from toolbox.scheme import Scheme


class GANScheme(Scheme):
    """A generator and a discriminator trained against each other.

    ``adversarial`` names the recipe's adversarial criterion in ``losses`` (called
    ``criterion(logits, target_is_real, for_discriminator)``); every other loss is a
    fidelity term comparing the generator's output with the target.  ``conditional``
    shows the discriminator (input, image) pairs; ``d_steps`` discriminator updates, each
    on a fresh batch, precede every generator update (``batches_per_step``).
    """

    #: shown in the error when the recipe lacks the adversarial loss
    adversarial_example = "{type: gan, mode: bce}"

    def __init__(self, parts: Parts, adversarial: str = "adv", conditional: bool = False, d_steps: int = 1):
        super().__init__(parts)
        if d_steps < 1:
            raise ValueError(f"d_steps must be at least 1, got {d_steps}")
        self.adversarial_name = adversarial
        self.adversarial, self.content = self._split_losses(adversarial)
        self.conditional = conditional
        self.batches_per_step = d_steps
        self.generator = parts.generator()
        self.discriminator = parts.discriminator(2 * parts.channels if conditional else parts.channels)
        self.opt_g = parts.optimizer("generator", self.generator.parameters())
        self.opt_d = parts.optimizer("discriminator", self.discriminator.parameters())
        for name, part in (("generator", self.generator), ("discriminator", self.discriminator),
                           ("generator", self.opt_g), ("discriminator", self.opt_d)):
            self.track(name, part)

    def _split_losses(self, name: str) -> tuple[WeightedLoss, dict[str, WeightedLoss]]:
        losses = self.parts.losses()
        if name not in losses:
            scheme = self.parts.recipe["scheme"]["type"]
            raise RecipeError(
                f"scheme '{scheme}' needs the adversarial loss under losses.{name} (e.g. "
                f"{self.adversarial_example}); found {', '.join(losses) or 'none'}", self.parts.source, "losses")
        return losses.pop(name), losses

    # -- what the discriminator sees and how it is scored ------------------------------------
    def pair(self, source: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """What the discriminator judges: the image, or (input, image) when conditional."""
        return torch.cat([self.parts.input_image(source), image], dim=1) if self.conditional else image

    def discriminator_terms(self, batch: dict, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """The discriminator's loss terms for real ``batch["target"]`` against ``fake``."""
        criterion = self.adversarial.module
        with self.parts.autocast():
            real_logits = self.discriminator(self.pair(batch["input"], batch["target"]))
            fake_logits = self.discriminator(self.pair(batch["input"], fake.detach()))
        if getattr(criterion, "relativistic", False):
            terms = criterion.relative(real_logits, fake_logits, for_discriminator=True)
            return {"l_d_real": terms["real"], "l_d_fake": terms["fake"]}
        return {"l_d_real": criterion(real_logits, True, for_discriminator=True),
                "l_d_fake": criterion(fake_logits, False, for_discriminator=True)}

    def discriminator_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(terms.values())

    def discriminator_update(self, batch: dict, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """One discriminator update against ``fake`` (detached); returns its logged terms."""
        self.requires_grad(self.discriminator, True)
        terms = self.discriminator_terms(batch, fake)
        self.backward_step(self.discriminator_loss(terms), self.opt_d)
        return self.logged(terms)

    def discriminator_updates(self, batches: list[dict]) -> dict[str, torch.Tensor]:
        """One update per batch, each against the current generator's output for it."""
        terms = {}
        for batch in batches:
            with torch.no_grad(), self.parts.autocast():
                fake = self.generate(batch["input"])
            terms = self.discriminator_update(batch, fake)
        return terms

    # -- the generator ---------------------------------------------------------------------
    def generator_outputs(self, source: torch.Tensor) -> list[torch.Tensor]:
        """Every output of the generator (the full-size image first)."""
        with self.parts.autocast():
            return all_outputs(self.generator(source))

    def fidelity(self, outputs: list[torch.Tensor], target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The fidelity terms (every loss but the adversarial one) on the full-size output;
        a scheme with deep supervision compares every scale instead."""
        return {f"l_g_{name}": loss(outputs[0].float(), target) for name, loss in self.content.items()}

    def adversarial_term(self, batch: dict, image: torch.Tensor) -> torch.Tensor:
        """The weighted adversarial loss of the generator: the discriminator should call
        ``image`` real.  The discriminator's weights get no gradient from it."""
        self.requires_grad(self.discriminator, False)
        criterion = self.adversarial.module
        with self.parts.autocast():
            judged = self.discriminator(self.pair(batch["input"], image))
            if getattr(criterion, "relativistic", False):  # the real images' logits, as constants
                with torch.no_grad():
                    real = self.discriminator(self.pair(batch["input"], batch["target"]))
        if getattr(criterion, "relativistic", False):
            terms = criterion.relative(real, judged, for_discriminator=False)
            return self.adversarial.weight * (terms["real"] + terms["fake"])
        return self.adversarial.weight * criterion(judged, True, for_discriminator=False)

    def generator_update(self, batch: dict, adversarial: bool = True,
                         outputs: list[torch.Tensor] | None = None) -> tuple[dict[str, torch.Tensor], list]:
        """One generator update on fidelity (+ adversarial) terms; returns the logged
        terms (with ``l_g_total``) and the outputs it computed."""
        outputs = outputs if outputs is not None else self.generator_outputs(batch["input"])
        terms = self.fidelity(outputs, batch["target"])
        if adversarial:
            terms[f"l_g_{self.adversarial_name}"] = self.adversarial_term(batch, outputs[0])
        total = sum(terms.values())
        self.backward_step(total, self.opt_g)
        self.requires_grad(self.discriminator, True)
        return self.logged(terms, total), outputs

    def train_step(self, batches, step):
        """``d_steps`` discriminator updates on fresh batches, then one generator update."""
        d_terms = self.discriminator_updates(batches)
        g_terms, _ = self.generator_update(batches[-1])
        return {**g_terms, **d_terms}
