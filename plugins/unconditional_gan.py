"""``unconditional_gan``: a generator that draws images from latent vectors, trained against a
discriminator on clean images only (DCGAN; seed 001's Algorithm 1).

Such a generator is a prior, not a denoiser: the toolbox denoises with it by searching its
latent space for the image that best explains the noisy one (``toolbox.LatentInversion``,
the recipe's ``inversion`` section), in validation, ``toolbox denoise`` and ``evaluate``.

One step: latents z ~ N(0, 1); fake = G(z); the discriminator is updated on the clean
patches (label ``real_label`` of the recipe's ``gan`` loss: 0.9 in the seed, one-sided label
smoothing) and on the fakes (label 0), the two errors added; then the generator is updated so
that the discriminator calls the same fakes real (label 1).  The two learning rates (TTUR)
are the recipe's ``optimizers.generator`` / ``optimizers.discriminator``.  At every
validation the run folder gets a grid of images drawn from fixed latents
(``figures/samples_stepNNNNNN.png``).
"""

from __future__ import annotations

import torch

import toolbox
from toolbox import GANScheme, RecipeError
from toolbox.nn import first_output


class UnconditionalGAN(GANScheme):
    """A latent generator against a discriminator on clean images (see the module)."""

    adversarial_example = "{type: gan, mode: bce, real_label: 0.9}"
    #: the parts the contract check (toolbox.testing.check_scheme) trains it with
    example_parts = {
        "generator": {"type": "dcgan_generator", "latent_dim": 8, "image_size": 16, "base_filters": 4},
        "discriminator": {"type": "dcgan_discriminator", "image_size": 16, "base_filters": 4},
        "losses": {"adv": {"type": "gan", "mode": "bce", "real_label": 0.9}},
    }

    def __init__(self, parts, adversarial: str = "adv", samples: int = 16):
        super().__init__(parts, adversarial=adversarial, conditional=False, d_steps=1)
        network = toolbox.unwrap(self.generator)
        if not getattr(network, "latent_dim", None):
            raise RecipeError(f"scheme 'unconditional_gan' needs a generator that draws images from latent "
                              f"vectors (e.g. dcgan_generator), not '{parts.recipe['generator']['type']}'",
                              parts.source, "generator")
        if self.content:
            raise RecipeError(f"scheme 'unconditional_gan' draws images from random latents, so there is no "
                              f"target to compare them with: remove losses {', '.join(self.content)} (keep "
                              f"only losses.{adversarial})", parts.source, "losses")
        if samples < 1:
            raise RecipeError(f"samples must be at least 1, got {samples}", parts.source, "scheme")
        self.latent_dim = int(network.latent_dim)
        seed = int(parts.recipe.get("seed", 0))
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        # Each process draws its own latents; the draws are restored on resume.
        self.latent_draws = torch.Generator().manual_seed(seed * 1000 + 17 + rank)
        self.track("latents", self.latent_draws)
        # The sample grid shows the same latents at every validation (Algorithm 1, line 17).
        self.fixed_latents = torch.randn(samples, self.latent_dim, generator=torch.Generator().manual_seed(seed))

    def latents(self, count: int) -> torch.Tensor:
        return torch.randn(count, self.latent_dim, generator=self.latent_draws).to(self.parts.device)

    def generate(self, source: torch.Tensor) -> torch.Tensor:
        """Images drawn from fresh latents, one per sample of ``source`` (only its size counts)."""
        return first_output(self.generator(self.latents(source.shape[0])))

    def train_step(self, batches, step):
        batch = batches[0]
        with self.parts.autocast():
            fake = self.generate(batch["target"])
        d_terms = self.discriminator_update(batch, fake)  # on fake.detach()
        g_terms, _ = self.generator_update(batch, outputs=[fake])
        return {**g_terms, **d_terms}

    def sample_grid(self, generator: torch.nn.Module) -> torch.Tensor:
        was_training = generator.training
        generator.eval()  # as the inversion draws: BatchNorm with its running statistics
        try:
            with torch.no_grad():
                return first_output(generator(self.fixed_latents.to(self.parts.device))).float().cpu()
        finally:
            generator.train(was_training)


@toolbox.hookimpl
def register_schemes(register):
    register("unconditional_gan", UnconditionalGAN, aliases=("dcgan_gan",))
