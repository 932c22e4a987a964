"""Seed 001's Algorithm 2: denoising by searching a generator's latent space."""

from __future__ import annotations

import pytest
import torch

import toolbox
from toolbox import LatentInversion, poisson_nll


class TinyLatentGenerator(torch.nn.Module):
    """A fixed, smooth map from 3 latent numbers to an 8x8 image in 0..1."""

    latent_dim = 3
    image_size = 8

    def __init__(self):
        super().__init__()
        self.map = torch.nn.Linear(3, 64)
        with torch.no_grad():
            self.map.weight.copy_(torch.randn(64, 3, generator=torch.Generator().manual_seed(3)))
            self.map.bias.zero_()

    def forward(self, latent):
        return torch.sigmoid(self.map(latent)).reshape(-1, 1, 8, 8)


def test_the_search_recovers_the_latent_that_drew_the_target():
    generator = TinyLatentGenerator()
    truth = torch.tensor([[0.3, -0.8, 0.5], [-1.0, 0.2, 0.7]])
    target = generator(truth).detach()
    inversion = LatentInversion(generator, starts=4, steps=50, max_steps=2000, eps=1e-8, lr=0.05)
    latent, loss = inversion.search(target)
    assert bool((loss <= 1e-8).all()), loss
    torch.testing.assert_close(latent, truth, atol=2e-3, rtol=0)
    with torch.no_grad():  # inference calls it under no_grad: the search still has gradients
        out = inversion(target)
    torch.testing.assert_close(out, target, atol=5e-4, rtol=0)  # loss <= 1e-8: RMS <= 1e-4
    assert inversion.windows == 2 and inversion.seconds > 0


def test_the_multi_start_continues_the_best_of_k():
    # With no descent in either phase the result is the generator's image of one of the
    # seeded starts: for each window, the start closest to that window's target.
    generator = TinyLatentGenerator()
    k = 6
    starts = torch.randn(2 * k, 3, generator=torch.Generator().manual_seed(11))
    targets = torch.stack([generator(starts[4:5])[0], generator(starts[k + 1:k + 2])[0]]).detach()
    targets = targets + 0.01  # not exactly any start's image
    inversion = LatentInversion(generator, starts=k, steps=0, max_steps=0, seed=11)
    latent, _ = inversion.search(targets)
    torch.testing.assert_close(latent, torch.stack([starts[4], starts[k + 1]]), atol=0, rtol=0)
    losses = ((generator(starts[:k]) - targets[0]) ** 2).flatten(1).mean(1)
    assert int(losses.argmin()) == 4  # the premise: start 4 is window 0's best


def test_the_best_start_wins_over_a_start_in_a_worse_basin():
    # Phase 1 runs each start; the pick is by loss after phase 1, so with a few steps the
    # chosen latent's loss is the lowest of all k (compared against running each alone).
    generator = TinyLatentGenerator()
    target = generator(torch.tensor([[1.5, -1.5, 1.0]])).detach() + 0.02
    k = 5
    inversion = LatentInversion(generator, starts=k, steps=30, max_steps=0, seed=4)
    _, chosen = inversion.search(target)
    starts = torch.randn(k, 3, generator=torch.Generator().manual_seed(4))
    alone = [float(inversion.descend(starts[i:i + 1], target, 30)[1]) for i in range(k)]
    assert float(chosen) == pytest.approx(min(alone), rel=1e-5)


def test_poisson_likelihood_gradient_matches_its_formula():
    prediction = (torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(0)) + 0.1).requires_grad_(True)
    counts = torch.poisson(prediction.detach() * 20, generator=torch.Generator().manual_seed(1))
    c = 20.0
    noisy = counts / c
    poisson_nll(prediction, noisy, c).sum().backward()
    expected = c * (1 - noisy / prediction.detach()) / 25
    torch.testing.assert_close(prediction.grad, expected, rtol=1e-5, atol=1e-6)
    # Its minimum over a constant image is the mean count (the maximum-likelihood rate).
    levels = torch.linspace(0.2, 1.5, 1301).reshape(-1, 1, 1, 1)
    nll = torch.stack([poisson_nll(level.expand(1, 1, 5, 5), noisy[:1], c) for level in levels]).flatten()
    assert float(levels.flatten()[nll.argmin()]) == pytest.approx(float(noisy[0].mean()), abs=1e-3)


def test_poisson_counts_in_the_images_own_units():
    # An image normalised as (x - offset) / scale is scored in its own units: the same as
    # the likelihood of the un-normalised image.
    generator = TinyLatentGenerator()
    inversion = LatentInversion(generator, loss="poisson", counts_per_unit=3.0)

    class Norm:
        offset, scale = 100.0, 400.0

    inversion.in_units_of(Norm)
    prediction, noisy = torch.rand(1, 1, 8, 8) * 0.9 + 0.05, torch.rand(1, 1, 8, 8)
    torch.testing.assert_close(inversion.data_term(prediction, noisy),
                               poisson_nll(prediction * 400 + 100, noisy * 400 + 100, 3.0))


def test_the_generator_is_left_as_it_was():
    generator = TinyLatentGenerator().train()
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    with torch.no_grad():
        LatentInversion(generator, starts=2, steps=5, max_steps=5)(torch.rand(1, 1, 8, 8))
    assert generator.training and all(p.requires_grad for p in generator.parameters())
    for key, value in generator.state_dict().items():
        torch.testing.assert_close(value, before[key], atol=0, rtol=0)


@pytest.mark.parametrize("options, message", [
    ({"loss": "l1"}, "mse or poisson"),
    ({"loss": "poisson"}, "counts_per_unit"),
    ({"starts": 0}, "starts must be at least 1"),
    ({"lr": 0}, "lr must be positive"),
])
def test_bad_settings_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        LatentInversion(TinyLatentGenerator(), **options)


def test_an_image_to_image_generator_cannot_be_inverted():
    network = toolbox.build("generators", {"type": "unet", "features": [4, 4, 4, 4, 4, 4]}, spatial_dims=2,
                            in_channels=1, out_channels=1)
    with pytest.raises(ValueError, match="latent"):
        LatentInversion(network)


def test_residual_shrink_is_never_worse_than_the_noisy_input_or_the_search():
    # The clean image lies off the generator's range (a pattern no latent draws): the plain
    # search returns the nearest image it can draw, worse than a weakly noisy input; the
    # shrunk residual keeps the better of both at weak and at strong noise.
    generator = TinyLatentGenerator()
    base = generator(torch.tensor([[0.4, -0.3, 0.8]])).detach()
    stripes = 0.08 * torch.sin(torch.arange(8.0) * 2.0).reshape(1, 1, 1, 8).expand(1, 1, 8, 8)
    clean = base + stripes
    for sd in (0.005, 0.3):
        noise = sd * torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
        noisy = clean + noise
        plain = LatentInversion(generator, starts=4, steps=100, max_steps=200, lr=0.05)(noisy)
        shrunk = LatentInversion(generator, starts=4, steps=100, max_steps=200, lr=0.05, residual="shrink",
                                 sigma=sd)(noisy)
        error = {name: float(((image - clean) ** 2).mean()) for name, image in
                 (("noisy", noisy), ("plain", plain), ("shrunk", shrunk))}
        # Within the sampling error of a 64-pixel window's residual power (about 18 %).
        assert error["shrunk"] <= 1.15 * min(error["noisy"], error["plain"]), (sd, error)
    assert error["plain"] < error["noisy"]  # at strong noise the search is the better of the two


def test_the_wiener_gain_follows_the_residual_power():
    inversion = LatentInversion(TinyLatentGenerator(), residual="shrink", sigma=0.1)
    drawn = torch.full((2, 1, 8, 8), 0.5)
    noisy = drawn + torch.stack([torch.full((1, 8, 8), 0.1), torch.full((1, 8, 8), 1.0)])
    out = inversion.corrected(noisy, drawn)
    torch.testing.assert_close(out[0], drawn[0])  # residual power = noise variance: all noise
    torch.testing.assert_close(out[1], drawn[1] + 0.99 * 1.0)  # 1 - 0.01 / 1


def test_the_poisson_term_is_zero_at_the_counts_and_positive_elsewhere():
    # So that eps (>= 0) stops the search only at a fit, as for the squared error.
    counts = torch.tensor([[[[0.0, 1.0, 5.0, 40.0]]]])
    c = 10.0
    # (a pixel of no counts costs the rate floor, 1e-3 counts)
    assert float(poisson_nll(counts / c, counts / c, c)) == pytest.approx(0.0, abs=1e-3)
    assert float(poisson_nll(counts / c + 0.05, counts / c, c)) > 0
    generator = TinyLatentGenerator()
    target = generator(torch.tensor([[0.2, 0.1, -0.4]])).detach()
    inversion = LatentInversion(generator, starts=2, steps=5, max_steps=50, loss="poisson", counts_per_unit=100)
    _, loss = inversion.search(torch.poisson(target * 100, generator=torch.Generator().manual_seed(0)) / 100)
    assert float(loss) > 0
