"""Training schemes: ``supervised`` (generator only) and ``paired_gan`` (conditional GAN).

Loss terms are logged BasicSR-style: ``l_g_<name>`` for each weighted generator loss,
``l_g_total``, and for the discriminator ``l_d_real`` / ``l_d_fake``.
"""

from __future__ import annotations

import toolbox
from toolbox import GANScheme, RecipeError, Scheme


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
            output = self.generate(batch["input"])
        terms = {f"l_g_{name}": loss(output.float(), batch["target"]) for name, loss in self.losses.items()}
        total = sum(terms.values())
        self.backward_step(total, self.optimizer)
        return self.logged(terms, total)


class PairedGAN(GANScheme):
    """Conditional GAN (pix2pix): D judges (input, target) against (input, G(input)).

    ``adversarial`` names the loss in ``losses`` that is the adversarial criterion (a
    ``gan`` loss); every other loss compares G(input) with the target.  ``d_steps``
    discriminator updates (each on a fresh batch) precede every generator update.
    ``conditional: false`` shows D the image alone.
    """

    def __init__(self, parts, d_steps: int = 1, adversarial: str = "adv", conditional: bool = True):
        super().__init__(parts, adversarial=adversarial, conditional=conditional, d_steps=d_steps)

    def discriminator_loss(self, terms):
        # pix2pix halves D's loss so that D learns slower than G.
        return 0.5 * (terms["l_d_real"] + terms["l_d_fake"])


@toolbox.hookimpl
def register_schemes(register):
    register("supervised", Supervised)
    register("paired_gan", PairedGAN, aliases=("pix2pix_gan",))
