"""ADL's training scheme (seed 003): warm-ups, then adversarial training with deep supervision."""

from __future__ import annotations

import torch

from toolbox import GANScheme, RecipeError

from .networks import average_pool


# -- scheme ----------------------------------------------------------------------------------
class ADLScheme(GANScheme):
    """ADL training: denoiser warm-up, discriminator warm-up, then adversarial training.

    Steps ``1..warmup_g`` train the denoiser alone on the fidelity losses; the next
    ``warmup_d`` steps train the discriminator alone; after that both train, the
    discriminator every ``d_every`` steps with its learning rate set to ``d_lr`` (the
    paper's 5e-5).  Every loss but ``adversarial`` is applied at each output scale of the
    denoiser against the target average-pooled to that scale, weighted by
    ``scale_weights`` (deep supervision).  The discriminator compares the denoised output
    with the clean image (paper); ``release_compat: true`` shows it the noisy input
    instead and drops the denoiser's adversarial term, as the public release does (the
    losses have their own ``release_compat`` option; the recipes' ``release`` profile sets
    them all).  Works with any generator (single output = one scale) and any
    discriminator (maps or a list of maps).
    """

    adversarial_example = "{type: gan, mode: hinge}"

    def __init__(self, parts, warmup_g: int = 0, warmup_d: int = 0, d_every: int = 1,
                 d_lr: float | None = 5e-5, adversarial: str = "adv", scale_weights=(1.0, 1.0, 1.0),
                 release_compat: bool = False):
        if min(warmup_g, warmup_d) < 0 or d_every < 1:
            raise ValueError("warmup_g and warmup_d must be >= 0 and d_every >= 1")
        super().__init__(parts, adversarial=adversarial)
        if not self.content:
            raise RecipeError("scheme 'adl' needs at least one fidelity loss (e.g. {type: adl})",
                              parts.source, "losses")
        self.release_compat = release_compat
        self.warmup_g, self.warmup_d, self.d_every, self.d_lr = warmup_g, warmup_d, d_every, d_lr
        self.scale_weights = list(scale_weights)

    def phase(self, step: int) -> str:
        if step <= self.warmup_g:
            return "warmup_g"
        if step <= self.warmup_g + self.warmup_d:
            return "warmup_d"
        return "adversarial"

    def fidelity(self, outputs, target):
        """Deep supervision: every fidelity loss at every output scale."""
        terms = {}
        for name, loss in self.content.items():
            total = 0.0
            for index, output in enumerate(outputs[: len(self.scale_weights)]):
                total = total + self.scale_weights[index] * loss(output.float(), average_pool(target, 2**index))
            terms[f"l_g_{name}"] = total
        return terms

    def _discriminator_update(self, batch, denoised):
        # The release shows the discriminator the noisy input as its "fake".
        return self.discriminator_update(batch, self.parts.input_image(batch["input"]) if self.release_compat
                                         else denoised)

    def train_step(self, batches, step):
        batch = batches[0]
        phase = self.phase(step)
        if phase == "warmup_d":
            with torch.no_grad(), self.parts.autocast():
                denoised = self.generate(batch["input"])
            return self._discriminator_update(batch, denoised)
        if phase == "adversarial" and step == self.warmup_g + self.warmup_d + 1 and self.d_lr:
            self.set_base_lr(self.opt_d, self.d_lr)
        adversarial = phase == "adversarial" and not self.release_compat
        logged, outputs = self.generator_update(batch, adversarial=adversarial)
        if phase == "adversarial" and step % self.d_every == 0:
            logged.update(self._discriminator_update(batch, outputs[0]))
        return logged
