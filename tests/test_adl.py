"""ADL (seed 003): Efficient-UNet denoiser and discriminator, its losses, and its scheme."""

from __future__ import annotations

import pytest
import torch

import toolbox
from conftest import RecordingPlugin, tiny_recipe
from toolbox import Parts
from toolbox import validate_recipe as validate
from toolbox_plugins.adl.losses import (
    ADLLoss,
    HistogramLoss,
    PyramidTextureLoss,
    soft_histogram,
    wavelet_bands,
)
from toolbox_plugins.adl.networks import (
    EfficientUNet,
    EfficientUNetDiscriminator,
)

SMALL = {"filters": (4, 6, 8), "bridge": 8, "enhancer_kernel": 3}


@pytest.mark.parametrize("dims, size", [(2, (37, 45)), (3, (17, 20, 23))])
def test_denoiser_gives_three_scales_for_odd_sizes(dims, size):
    net = EfficientUNet(dims, 1, 1, **SMALL).eval()
    with torch.no_grad():
        full, half, quarter = net(torch.rand(2, 1, *size))
    assert full.shape[2:] == size
    assert half.shape[2:] == tuple((s + 1) // 2 for s in size)
    assert quarter.shape[2:] == tuple((s + 3) // 4 for s in size)
    assert full.min() >= 0 and full.max() <= 1  # sigmoid heads


def test_denoiser_defaults_are_the_papers():
    net = EfficientUNet(2, 1, 1)
    assert [net.enc1.body[0].out_channels, net.enc2.body[0].out_channels,
            net.enc3.body[0].out_channels, net.bridge.body[0].out_channels] == [96, 128, 160, 192]
    dilations = [b.dilation[0] for b in net.enhancer.branches]
    assert dilations == [1, 2, 4] and net.enhancer.branches[0].kernel_size == (7, 7)
    # Heads: 1, 2 and 3 residual blocks for full, 1/2 and 1/4 scale.
    assert [len(h.blocks) for h in (net.head_full, net.head_half, net.head_quarter)] == [1, 2, 3]


def test_content_enhancer_feeds_the_last_decoder_stage():
    net = EfficientUNet(2, 1, 1, **SMALL).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        reference = net(x)[0]
        for p in net.enhancer.parameters():
            p.add_(0.5)
        changed = net(x)
    assert not torch.allclose(reference, changed[0])
    assert torch.equal(net(x)[2], changed[2])  # the 1/4 head does not see the enhancer


@pytest.mark.parametrize("dims", [2, 3])
def test_discriminator_gives_bridge_and_three_scale_maps(dims):
    net = EfficientUNetDiscriminator(dims, 1, filters=(4, 4, 8), bridge=8)
    maps = net(torch.rand(2, 1, *[24] * dims))
    assert len(maps) == 4
    assert [m.shape[2] for m in maps] == [3, 24, 12, 6]
    assert all(m.shape[:2] == (2, 1) for m in maps)


def test_discriminator_defaults_are_the_papers():
    net = EfficientUNetDiscriminator(2, 1)
    assert [net.enc1.body[0].out_channels, net.enc2.body[0].out_channels,
            net.enc3.body[0].out_channels, net.bridge.body[0].out_channels] == [48, 64, 80, 96]


# -- losses ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [2, 3])
def test_pyramid_is_zero_on_identical_images_and_grows_with_high_frequency_noise(dims):
    torch.manual_seed(0)
    loss = PyramidTextureLoss(levels=3)
    image = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 64, 64), 5, 1, 2) if dims == 2 else \
        torch.nn.functional.avg_pool3d(torch.rand(1, 1, 24, 24, 24), 5, 1, 2)
    assert loss(image, image).item() == 0.0
    values = [loss(image + s * torch.randn_like(image), image).item() for s in (0.01, 0.05, 0.2)]
    assert values[0] < values[1] < values[2]


def test_pyramid_bands_are_the_a_trous_b3_spline_details():
    x = torch.zeros(1, 1, 41, 41)
    x[..., 20, 20] = 1.0  # a point impulse
    bands = wavelet_bands(x, levels=3)
    # The first blur is [1, 4, 6, 4, 1] / 16: the first band at the impulse is 1 - (6/16)^2.
    assert bands[0][0, 0, 20, 20].item() == pytest.approx(1 - (6 / 16) ** 2)
    # Bands sum to the image minus its coarsest blur (a telescoping sum).
    image = torch.rand(1, 1, 32, 32)
    bands = wavelet_bands(image, 3)
    from toolbox.nn import B3_SPLINE, separable_blur
    coarse = image
    for level in range(3):
        coarse = separable_blur(coarse, B3_SPLINE, 2**level)
    assert torch.allclose(sum(bands) + coarse, image, atol=1e-5)


def test_pyramid_sums_every_band_unless_release_compat():
    torch.manual_seed(1)
    a, b = torch.rand(1, 1, 48, 48), torch.rand(1, 1, 48, 48)
    paper = PyramidTextureLoss(levels=3)(a, b).item()
    only_first = PyramidTextureLoss(levels=3, weights=[1, 0, 0])(a, b).item()
    release = PyramidTextureLoss(levels=3, release_compat=True)(a, b).item()
    assert paper > only_first > 0
    assert release < paper / 2  # one (coarse) band, divided by the number of levels


@pytest.mark.parametrize("dims", [2, 3])
def test_histogram_loss_has_a_usable_gradient(dims):
    torch.manual_seed(2)
    prediction = (0.3 + 0.4 * torch.rand(2, 1, *[16] * dims)).requires_grad_(True)
    target = torch.rand(2, 1, *[16] * dims)
    loss = HistogramLoss()(prediction, target)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert torch.isfinite(prediction.grad).all() and prediction.grad.abs().sum() > 0
    # A small step against the gradient brings the histograms closer.
    with torch.no_grad():
        stepped = prediction - 1e-3 * prediction.grad / prediction.grad.abs().max()
    assert HistogramLoss()(stepped, target) < loss


def test_histogram_is_zero_for_equal_value_sets_and_counts_every_voxel():
    x = torch.rand(1, 2, 10, 10)
    shuffled = x.flatten(2)[:, :, torch.randperm(100)].reshape(1, 2, 10, 10)
    assert HistogramLoss()(shuffled, x).item() == pytest.approx(0.0, abs=1e-5)
    counts = soft_histogram(x, 32, 0.0, 1.0)
    assert counts.shape == (1, 2, 32) and torch.allclose(counts.sum(-1), torch.full((1, 2), 100.0))


def test_release_histogram_is_hard_and_has_no_gradient():
    prediction = torch.rand(1, 1, 16, 16, requires_grad=True)
    loss = HistogramLoss(release_compat=True)(prediction, torch.rand(1, 1, 16, 16))
    loss.backward()
    assert loss > 0 and prediction.grad.abs().sum() == 0


def test_adl_loss_combines_the_three_terms():
    a, b = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    full = ADLLoss()(a, b)
    parts = (a - b).abs().mean() + PyramidTextureLoss()(a, b) + HistogramLoss()(a, b)
    assert full.item() == pytest.approx(parts.item(), rel=1e-5)


def test_adl_losses_are_available_to_any_recipe_by_name():
    for name in ("adl", "pyramid_texture", "histogram"):
        assert name in toolbox.components("losses")


# -- scheme ----------------------------------------------------------------------------------
def _adl_scheme(small_ct, fidelity=None, **options):
    recipe = tiny_recipe(small_ct)
    recipe["generator"] = {"type": "efficient_unet", **{k: list(v) if isinstance(v, tuple) else v
                                                        for k, v in SMALL.items()}}
    recipe["discriminator"] = {"type": "recording"}
    recipe["losses"] = {"fidelity": fidelity or {"type": "adl"}, "adv": {"type": "gan", "mode": "hinge", "weight": 0.1}}
    recipe["scheme"] = {"type": "adl", **options}
    checked = validate(recipe, "test")
    return toolbox.build("schemes", checked["scheme"], parts=Parts(checked.data, "test", torch.device("cpu"), toolbox.plugin_registry()))


def _batch():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 32, 32, generator=g)
    return {"input": (target + 0.1 * torch.randn(2, 1, 32, 32, generator=g)).clamp(0, 1), "target": target}


def test_schedule_warms_up_denoiser_then_discriminator_then_both(small_ct, plugin_for_one_test):
    plugin_for_one_test(RecordingPlugin())
    scheme = _adl_scheme(small_ct, warmup_g=2, warmup_d=1, d_every=1, d_lr=5e-5)
    batch = _batch()
    assert set(scheme.train_step([batch], 1)) == {"l_g_fidelity", "l_g_total"}
    assert not scheme.discriminator.seen
    assert set(scheme.train_step([batch], 3)) == {"l_d_real", "l_d_fake"}
    terms = scheme.train_step([batch], 4)
    assert {"l_g_fidelity", "l_g_adv", "l_d_real", "l_d_fake"} <= set(terms)
    assert all(group["lr"] == 5e-5 for group in scheme.opt_d.param_groups)


def test_paper_mode_shows_the_discriminator_the_denoised_output(small_ct, plugin_for_one_test):
    plugin_for_one_test(RecordingPlugin())
    scheme = _adl_scheme(small_ct)
    batch = _batch()
    scheme.train_step([batch], 1)
    judged_for_g, real, fake = scheme.discriminator.seen
    assert torch.equal(real, batch["target"])
    assert not torch.equal(fake, batch["input"]) and torch.equal(fake, judged_for_g)


def test_release_compat_is_an_option_of_each_part_that_owns_it(small_ct, plugin_for_one_test):
    plugin_for_one_test(RecordingPlugin())
    # A loss switched in the recipe keeps its switch: the scheme never patches built parts.
    kept = _adl_scheme(small_ct, fidelity={"type": "adl", "release_compat": True}, release_compat=False)
    assert kept.content["fidelity"].module.histogram.release_compat
    scheme = _adl_scheme(small_ct, release_compat=True)
    assert not scheme.content["fidelity"].module.histogram.release_compat
    batch = _batch()
    terms = scheme.train_step([batch], 1)
    assert "l_g_adv" not in terms  # no adversarial term for the denoiser
    real, fake = scheme.discriminator.seen
    assert torch.equal(real, batch["target"]) and torch.equal(fake, batch["input"])  # clean vs noisy


def test_deep_supervision_uses_every_scale(small_ct, plugin_for_one_test):
    plugin_for_one_test(RecordingPlugin())
    full_only = _adl_scheme(small_ct, scale_weights=[1.0, 0.0, 0.0], warmup_g=5)
    every = _adl_scheme(small_ct, scale_weights=[1.0, 1.0, 1.0], warmup_g=5)
    every.generator.load_state_dict(full_only.generator.state_dict())
    batch = _batch()
    assert every.train_step([batch], 1)["l_g_fidelity"] > full_only.train_step([batch], 1)["l_g_fidelity"]


@pytest.mark.parametrize("dims", [2, 3])
def test_residual_output_passes_the_input_through_when_the_heads_are_silent(dims):
    # 3 input channels = a 2.5D stack: the middle slice is the one the output adds to.
    net = EfficientUNet(dims, 3, 1, filters=(4, 4, 8), bridge=8, output="residual")
    for head in (net.head_full, net.head_half, net.head_quarter):
        for p in head.parameters():
            torch.nn.init.zeros_(p)
    x = torch.rand((2, 3) + (12,) * dims)
    full, half, quarter = net.eval()(x)
    middle = x[:, 1:2]
    pool = torch.nn.functional.avg_pool3d if dims == 3 else torch.nn.functional.avg_pool2d
    torch.testing.assert_close(full, middle)
    torch.testing.assert_close(half, pool(middle, 2, ceil_mode=True))
    torch.testing.assert_close(quarter, pool(middle, 4, ceil_mode=True))
    with pytest.raises(ValueError, match="multiple"):
        EfficientUNet(dims, 3, 2, filters=(4, 4, 8), bridge=8, output="residual")


@pytest.mark.parametrize("recipe", ["adl2d", "adl3d"])
def test_release_profile_sets_the_scheme_and_the_losses(recipe):
    from conftest import ROOT

    loaded = toolbox.load_recipe(ROOT / "recipes" / f"{recipe}.yaml", profile="release")
    assert loaded["scheme"]["release_compat"] and loaded["losses"]["fidelity"]["release_compat"]


def test_histogram_loss_pulls_values_outside_its_range_back_in():
    """A residual output can leave 0..1; clamping gave such values no gradient, so the loss
    pushed a noisy zero background below 0 for good.  Extrapolated binning keeps the count
    and points the gradient back into the range."""
    target = torch.zeros(1, 1, 8, 8)  # a background of zeros
    prediction = torch.full((1, 1, 8, 8), -0.05, requires_grad=True)
    counts = soft_histogram(prediction, 11, 0.0, 1.0)
    assert float(counts.sum()) == pytest.approx(64.0)
    HistogramLoss(bins=11)(prediction, target).backward()
    assert (prediction.grad < 0).all()  # descent raises the values towards 0
    above = torch.full((1, 1, 8, 8), 1.05, requires_grad=True)
    HistogramLoss(bins=11)(above, torch.ones(1, 1, 8, 8)).backward()
    assert (above.grad > 0).all()  # descent lowers them towards 1
