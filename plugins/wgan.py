"""The WGAN family for denoising (seed 000 section 3; Yang et al. 2018, WGAN-VGG).

- ``wgan_cnn``: the generator shared by CNN-MSE, CNN-VGG, WGAN-MSE and WGAN-VGG: a stack of
  3x3 convolutions with ReLU (8 layers of 32 filters by default), 2D or 3D.
- ``wgan_critic``: convolutions of 64, 64, 128, 128, 256, 256 filters with strides 1, 2, 1,
  2, 1, 2 and leaky ReLU, then dense layers (1024, then 1 score) - no sigmoid.
- ``gradient_penalty``: Gulrajani et al.'s penalty on random interpolates of real and
  generated samples, and the scheme ``wgan_gp``: ``n_critic`` critic steps (each on a fresh
  batch) per generator step, critic loss -E[D(y)] + E[D(G(x))] + 10 GP, generator loss
  -E[D(G(x))] plus the recipe's content losses (MSE, perceptual).
The four variants differ only in their losses: see ``recipes/cnn_mse.yaml`` and friends.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv

import toolbox
from toolbox import GANScheme
from toolbox.nn import all_outputs


class WGANCNN(torch.nn.Module):
    """Plain CNN denoiser: ``depth`` 3x3 convolutions of ``width`` filters with ReLU.

    ``final_activation: relu`` (WGAN-VGG's, for non-negative images) or ``none``.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1,
                 depth: int = 8, width: int = 32, final_activation: str = "relu"):
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be at least 2, got {depth}")
        if final_activation not in ("relu", "none"):
            raise ValueError(f"final_activation must be relu or none, got {final_activation!r}")
        conv = Conv[Conv.CONV, spatial_dims]
        layers, channels = [], in_channels
        for _ in range(depth - 1):
            layers += [conv(channels, width, 3, padding=1), torch.nn.ReLU(inplace=True)]
            channels = width
        layers.append(conv(channels, out_channels, 3, padding=1))
        if final_activation == "relu":
            layers.append(torch.nn.ReLU())
        self.body = torch.nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


class WGANCritic(torch.nn.Module):
    """WGAN-VGG critic: strided 3x3 convolutions with leaky ReLU, then dense 1024 -> 1.

    The dense layer sees the feature map average-pooled to the grid a ``input_size`` patch
    gives (input_size / 8 per axis: 8x8 for the paper's 64x64 patches, where the pooling
    is the identity), so other patch sizes work too.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1,
                 channels=(64, 64, 128, 128, 256, 256), strides=(1, 2, 1, 2, 1, 2),
                 input_size: int = 64, fc: int = 1024):
        super().__init__()
        if len(channels) != len(strides):
            raise ValueError("channels and strides need the same length")
        conv = Conv[Conv.CONV, spatial_dims]
        layers, previous = [], in_channels
        for width, stride in zip(channels, strides):
            layers += [conv(previous, width, 3, stride=stride, padding=1), torch.nn.LeakyReLU(0.2, True)]
            previous = width
        self.features = torch.nn.Sequential(*layers)
        reduction = 1
        for stride in strides:
            reduction *= stride
        self.grid = max(input_size // reduction, 1)
        self.pool = (torch.nn.AdaptiveAvgPool2d if spatial_dims == 2 else torch.nn.AdaptiveAvgPool3d)(self.grid)
        self.head = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(previous * self.grid**spatial_dims, fc),
            torch.nn.LeakyReLU(0.2, True), torch.nn.Linear(fc, 1),
        )

    def forward(self, x):
        return self.head(self.pool(self.features(x)))


def _scores(output) -> torch.Tensor:
    return sum(m.float().flatten(1).mean(1) for m in all_outputs(output))  # one score per sample


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """E[(||grad_x D(x)||_2 - 1)^2] at x = a real + (1 - a) fake, a ~ U(0, 1) per sample.

    The norm is taken over every axis but the batch; a tiny epsilon keeps its gradient
    finite where the critic's gradient is exactly zero.
    """
    shape = (real.shape[0],) + (1,) * (real.ndim - 1)
    alpha = torch.rand(shape, generator=generator, device="cpu").to(real)
    mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    scores = _scores(critic(mixed))
    (grads,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    norms = torch.sqrt(grads.flatten(1).pow(2).sum(1) + 1e-12)
    return ((norms - 1) ** 2).mean()


class WGANGP(GANScheme):
    """WGAN with gradient penalty: ``n_critic`` critic steps, then one generator step.

    ``adversarial`` names the critic criterion in ``losses`` (``{type: gan, mode: wgan}``);
    every other loss (MSE, perceptual) compares G(input) with the target.  ``gp_weight`` is
    lambda (10).  ``conditional: true`` shows the critic (input, image) pairs.  Without an
    adversarial loss the scheme is rejected: use ``supervised`` for CNN-MSE / CNN-VGG.
    """

    adversarial_example = "{type: gan, mode: wgan}"

    def __init__(self, parts, n_critic: int = 4, gp_weight: float = 10.0, adversarial: str = "adv",
                 conditional: bool = False):
        if n_critic < 1:
            raise ValueError(f"n_critic must be at least 1, got {n_critic}")
        super().__init__(parts, adversarial=adversarial, conditional=conditional, d_steps=n_critic)
        self.gp_weight = gp_weight
        self.critic = self.discriminator
        self._gp_generator = torch.Generator().manual_seed(int(parts.recipe.get("seed", 0)))
        self.track("gradient_penalty", self._gp_generator)

    def discriminator_terms(self, batch, fake):
        terms = super().discriminator_terms(batch, fake)
        # The penalty needs second derivatives: computed in full precision.
        terms["l_d_gp"] = self.gp_weight * gradient_penalty(
            self.critic, self.pair(batch["input"], batch["target"]), self.pair(batch["input"], fake),
            self._gp_generator)
        return terms

    def train_step(self, batches, step):
        terms = super().train_step(batches, step)
        terms["w_distance"] = -(terms["l_d_real"] + terms["l_d_fake"])
        return terms


@toolbox.hookimpl
def register_generators(register):
    register("wgan_cnn", WGANCNN, aliases=("cnn",), example={"depth": 3, "width": 4})


@toolbox.hookimpl
def register_discriminators(register):
    register("wgan_critic", WGANCritic, example={"channels": (4, 4, 8, 8, 8, 8), "input_size": 16, "fc": 8})


@toolbox.hookimpl
def register_schemes(register):
    register("wgan_gp", WGANGP)
