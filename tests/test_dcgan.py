"""DCGAN generator and discriminator (seed 001): shapes in 2D and 3D, the seed's layer rules,
initialisation, and clear errors for sizes they cannot take."""

from __future__ import annotations

import pytest
import torch

import toolbox


def _build(kind, name, dims, **options):
    injected = {"spatial_dims": dims}
    injected.update({"out_channels": 1} if kind == "generators" else {"in_channels": 1})
    return toolbox.build(kind, {"type": name, **options}, **injected)


@pytest.mark.parametrize("dims", [2, 3])
def test_generator_makes_images_of_its_size_that_the_discriminator_scores(dims):
    torch.manual_seed(0)
    generator = _build("generators", "dcgan_generator", dims, latent_dim=50, image_size=16, base_filters=8)
    critic = _build("discriminators", "dcgan_discriminator", dims, image_size=16, base_filters=8)
    images = generator(torch.randn(4, 50))
    assert images.shape == (4, 1) + (16,) * dims and 0 <= images.min() and images.max() <= 1
    assert critic(images).shape == (4, 1)


def test_layers_follow_the_seed_batchnorm_everywhere_but_generator_output_and_critic_input():
    generator = _build("generators", "dcgan_generator", 2, latent_dim=50, image_size=64, base_filters=8)
    critic = _build("discriminators", "dcgan_discriminator", 2, image_size=64, base_filters=8)
    g_layers, d_layers = list(generator.net), list(critic.net)
    assert isinstance(g_layers[-1], torch.nn.Tanh) and isinstance(g_layers[-2], torch.nn.ConvTranspose2d)
    assert isinstance(g_layers[1], torch.nn.BatchNorm2d)  # every other transposed convolution is normalised
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in g_layers) == 4  # 4 -> 64: 5 layers, 4 with BN
    assert isinstance(d_layers[1], torch.nn.LeakyReLU) and d_layers[1].negative_slope == 0.2  # no BN at input
    assert not any(isinstance(m, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)) for m in critic.modules())
    assert all(m.stride == (2, 2) for m in d_layers[:-1] if isinstance(m, torch.nn.Conv2d))
    weights = torch.cat([m.weight.flatten() for m in generator.modules() if isinstance(m, torch.nn.ConvTranspose2d)])
    weights = weights.detach()
    assert abs(float(weights.mean())) < 2e-3 and abs(float(weights.std()) - 0.02) < 2e-3  # N(0, 0.02)


@pytest.mark.parametrize("size", [48, 100, 4])
def test_a_size_that_is_not_a_power_of_two_is_refused_in_one_line(size):
    with pytest.raises(toolbox.RecipeError, match="power of two"):
        _build("generators", "dcgan_generator", 2, image_size=size)


def test_the_discriminator_names_the_size_it_was_built_for():
    critic = _build("discriminators", "dcgan_discriminator", 2, image_size=32, base_filters=4)
    with pytest.raises(ValueError, match="built for images of 32"):
        critic(torch.rand(1, 1, 64, 64))
