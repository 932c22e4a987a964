"""Training schemes: ``supervised`` (generator only) and ``paired_gan`` (conditional GAN).

Loss terms are logged BasicSR-style: ``l_g_<name>`` for each weighted generator loss,
``l_g_total``, and for the discriminator ``l_d_real`` / ``l_d_fake``.
"""

from __future__ import annotations

import torch

import toolbox
from toolbox import RecipeError, Scheme


class Supervised(Scheme):
    """Generator only: the weighted sum of every loss in ``losses`` on (G(input), target)."""

    def __init__(self, parts):
        super().__init__(parts)
        self.generator = parts.generator()
        self.losses = parts.losses()
        if not self.losses:
            raise RecipeError("scheme 'supervised' needs at least one loss", parts.source, "losses")
        self.optimizer = parts.optimizer("generator", self.generator.parameters())
        self.track("generator", self.generator)
        self.track("generator", self.optimizer)

    def train_step(self, batches, step):
        batch = batches[0]
        with self.parts.autocast():
            output = self.generator(batch["input"])
            output = output[0] if isinstance(output, (tuple, list)) else output
        terms = {f"l_g_{name}": loss(output.float(), batch["target"]) for name, loss in self.losses.items()}
        total = sum(terms.values())
        self.backward_step(total, self.optimizer)
        return {**{k: v.item() for k, v in terms.items()}, "l_g_total": total.item()}


class PairedGAN(Scheme):
    """Conditional GAN (pix2pix): D judges (input, target) against (input, G(input)).

    ``adversarial`` names the loss in ``losses`` that is the adversarial criterion (a
    ``gan`` loss); every other loss compares G(input) with the target.  ``d_steps``
    discriminator updates (each on a fresh batch) precede every generator update.
    ``conditional: false`` shows D the image alone.
    """

    def __init__(self, parts, d_steps: int = 1, adversarial: str = "adv", conditional: bool = True):
        super().__init__(parts)
        if d_steps < 1:
            raise ValueError(f"d_steps must be at least 1, got {d_steps}")
        self.adversarial, self.pixel_losses = self.split_adversarial(adversarial, "{type: gan, mode: bce}")
        self.adversarial_name = adversarial
        self.conditional = conditional
        self.batches_per_step = d_steps
        self.build_adversarial_pair(2 * parts.channels if conditional else parts.channels)

    def _pair(self, source, image):
        return torch.cat([source, image], dim=1) if self.conditional else image

    def train_step(self, batches, step):
        criterion = self.adversarial.module
        # Discriminator: real pairs towards "real", generated pairs towards "fake".
        self.requires_grad(self.discriminator, True)
        for batch in batches:
            with torch.no_grad(), self.parts.autocast():
                fake = self.generate(batch["input"])
            with self.parts.autocast():
                real_logits = self.discriminator(self._pair(batch["input"], batch["target"]))
                fake_logits = self.discriminator(self._pair(batch["input"], fake.detach()))
            l_d_real = criterion(real_logits, True, for_discriminator=True)
            l_d_fake = criterion(fake_logits, False, for_discriminator=True)
            # pix2pix halves D's loss so that D learns slower than G.
            self.backward_step(0.5 * (l_d_real + l_d_fake), self.opt_d)

        # Generator: fool D and stay close to the target.
        logged = self.adversarial_generator_step(batches[-1], self.discriminator, self.adversarial,
                                                 self.adversarial_name, self.pixel_losses, self.opt_g,
                                                 pair=self._pair)
        logged.update(l_d_real=l_d_real.item(), l_d_fake=l_d_fake.item())
        return logged


@toolbox.hookimpl
def register_schemes(register):
    register("supervised", Supervised)
    register("paired_gan", PairedGAN, aliases=("pix2pix_gan",))
