"""ESRGAN's two phases in one run (seed 002 trains its network this way).

1. ``pretrain_steps`` steps of fidelity alone (``pretrain_losses``, L1 in ESRGAN): a
   PSNR-oriented network first, so that the adversarial phase adds texture to a network
   that already restores the image instead of teaching it from nothing.
2. Then every fidelity loss (pixel, perceptual, texture ...) plus the adversarial term
   (relativistic in ESRGAN), the discriminator updated once per step on the same batch,
   after the generator (BasicSR's order).

The phase is a function of the step alone, so a run resumed in either phase continues it
exactly.  The learning rates follow ``train.lr_schedule`` (ESRGAN: halved at milestones).
"""

from __future__ import annotations

from toolbox import GANScheme, RecipeError


class ESRGANScheme(GANScheme):
    adversarial_example = "{type: gan, mode: ragan}"

    def __init__(self, parts, pretrain_steps: int = 0, pretrain_losses=("pix",), adversarial: str = "adv",
                 d_every: int = 1):
        super().__init__(parts, adversarial=adversarial, conditional=False)
        if pretrain_steps < 0 or d_every < 1:
            raise ValueError("pretrain_steps must be >= 0 and d_every >= 1")
        unknown = [name for name in pretrain_losses if name not in self.content]
        if unknown or not pretrain_losses:
            raise RecipeError(f"pretrain_losses {list(pretrain_losses)} must name fidelity losses of the recipe "
                              f"({', '.join(self.content) or 'none'})", parts.source, "scheme.pretrain_losses")
        self.pretrain_steps, self.d_every = int(pretrain_steps), int(d_every)
        self.pretrain_losses = list(pretrain_losses)

    def phase(self, step: int) -> str:
        return "pretrain" if step <= self.pretrain_steps else "adversarial"

    def train_step(self, batches, step):
        batch = batches[0]
        if self.phase(step) == "pretrain":
            outputs = self.generator_outputs(batch["input"])
            terms = {f"l_g_{name}": self.content[name](outputs[0].float(), batch["target"])
                     for name in self.pretrain_losses}
            total = sum(terms.values())
            self.backward_step(total, self.opt_g)
            return self.logged(terms, total)
        logged, outputs = self.generator_update(batch, adversarial=True)
        if step % self.d_every == 0:
            logged.update(self.discriminator_update(batch, outputs[0].detach()))
        return logged
