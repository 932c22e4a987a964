"""pix2pix parts against the seed and junyanz's reference defaults."""

from __future__ import annotations

import pytest
import torch

from toolbox_plugins.pix2pix import PatchGAN, Pix2PixUNet


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_unet_has_seven_levels_down_and_up_at_full_width():
    net = Pix2PixUNet(spatial_dims=2, in_channels=1, out_channels=1)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    ups = [m for m in net.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(convs) == 7 and len(ups) == 7
    assert all(c.stride == (2, 2) and c.kernel_size == (4, 4) for c in convs + ups)
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 512, 512, 512]
    # junyanz's unet_128 with one grey channel in and out: 41.8 M parameters.
    assert 41e6 < _count(net) < 43e6


def test_unet_bottleneck_is_one_pixel_for_128_patches():
    net = Pix2PixUNet(spatial_dims=2, base_filters=4).eval()
    sizes = []
    innermost = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    innermost.register_forward_hook(lambda m, i, o: sizes.append(o.shape[2:]))
    net(torch.rand(1, 1, 128, 128))
    assert tuple(sizes[0]) == (1, 1)


def test_unet_has_skip_connections_and_dropout_inside():
    from toolbox_plugins.pix2pix import _SkipBlock

    net = Pix2PixUNet(spatial_dims=2, base_filters=4)
    shapes = []
    for block in net.modules():
        if isinstance(block, _SkipBlock) and not block.outermost:
            block.register_forward_hook(lambda m, i, o: shapes.append((i[0].shape[1], o.shape[1])))
    net.eval()(torch.rand(1, 1, 128, 128))
    # Every inner level returns its input concatenated with what it decoded (the skip).
    assert len(shapes) == 6 and all(out == 2 * inp for inp, out in shapes)
    assert sum(isinstance(m, torch.nn.Dropout) for m in net.modules()) == 2


def test_unet_output_is_in_image_range_and_3d_works():
    net = Pix2PixUNet(spatial_dims=3, num_downs=5, base_filters=2).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 1, 20, 24, 33))
    assert out.shape == (1, 1, 20, 24, 33)
    assert out.min() >= 0 and out.max() <= 1


def test_residual_option_learns_the_noise():
    net = Pix2PixUNet(spatial_dims=2, num_downs=5, base_filters=2, output="linear", residual=True)
    for p in net.parameters():
        torch.nn.init.zeros_(p)
    x = torch.rand(1, 1, 32, 32)
    assert torch.allclose(net(x), x, atol=1e-6)


def test_init_is_normal_002():
    net = Pix2PixUNet(spatial_dims=2)
    weight = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][3].weight
    assert abs(weight.std().item() - 0.02) < 0.002


def test_patchgan_is_the_70_pixel_basic_discriminator():
    d = PatchGAN(spatial_dims=2, in_channels=2)
    # junyanz "basic" D on 256x256 gives a 30x30 map, ~2.76 M parameters with 2 input channels.
    assert d(torch.rand(1, 2, 256, 256)).shape == (1, 1, 30, 30)
    assert 2.7e6 < _count(d) < 2.8e6
    d3 = PatchGAN(spatial_dims=3, in_channels=2, base_filters=4)
    assert d3(torch.rand(1, 2, 32, 32, 32)).shape[:2] == (1, 1)


@pytest.mark.parametrize("dims", [2, 3])
def test_a_detail_discriminator_judges_only_the_finest_band(dims):
    """`detail`: the discriminator sees the finest wavelet band (scaled): a change in level
    or a smooth gradient does not reach it, a change in fine texture does."""
    from toolbox.nn import fine_detail

    torch.manual_seed(0)
    size = (1, 2) + (32,) * dims
    texture = torch.randn(size) * 0.01
    flat = torch.zeros(size)
    assert fine_detail(flat + 3.0).abs().max() < 1e-6
    white = fine_detail(texture)
    assert 0.5 < float(white.pow(2).mean() / texture.pow(2).mean()) < 1.0  # most of white noise is fine
    smooth = torch.linspace(0, 1, 32).reshape((1, 1) + (1,) * (dims - 1) + (32,)).expand(size)
    inner = (slice(None), slice(None)) + (slice(4, -4),) * dims
    assert fine_detail(smooth)[inner].abs().max() < 1e-6  # a linear ramp has no fine detail

    judge = PatchGAN(spatial_dims=dims, in_channels=2, base_filters=4, norm="none", detail=50).eval()
    with torch.no_grad():
        seen = judge(texture)
        torch.testing.assert_close(judge(texture + 3.0), seen, atol=1e-4 * float(seen.abs().max()), rtol=0)
        assert not torch.allclose(judge(0.3 * texture), seen, atol=0, rtol=0.1)  # blurred: less power
    with pytest.raises(ValueError, match="detail is a gain"):
        PatchGAN(spatial_dims=dims, detail=-1)
