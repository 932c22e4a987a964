"""The microscopy article's methods: WGAN-GP parts, the offline VGG19 loss, ResUNet with auto-context."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch

import toolbox
from conftest import SAMPLES, tiny_recipe, write_recipe
from toolbox.cli import main
from toolbox.errors import ToolboxError
from toolbox import validate_recipe as validate
from toolbox import Parts
from toolbox_plugins.resunet import ResUNet
from toolbox_plugins.vgg import VGGPerceptualLoss, layer_indices, load_vgg19_state, vgg19_features
from toolbox_plugins.wgan import WGANCNN, WGANCritic, gradient_penalty

# torchvision's vgg19().state_dict() layout: name -> shape (features only; the classifier
# keys a full file carries are ignored).
TORCHVISION_FEATURE_SHAPES = {
    f"features.{i}.weight": (o, c, 3, 3) for i, (c, o) in {
        0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256),
        14: (256, 256), 16: (256, 256), 19: (256, 512), 21: (512, 512), 23: (512, 512),
        25: (512, 512), 28: (512, 512), 30: (512, 512), 32: (512, 512), 34: (512, 512)}.items()
}


# -- WGAN-GP ---------------------------------------------------------------------------------
class LinearCritic(torch.nn.Module):
    """D(x) = <w, x>: its gradient is w everywhere, so GP = (||w|| - 1)^2 exactly."""

    def __init__(self, shape):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(shape))

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1, keepdim=True)


def test_gradient_penalty_equals_its_definition():
    torch.manual_seed(0)
    critic = LinearCritic((1, 5, 6))
    real, fake = torch.rand(3, 1, 5, 6), torch.rand(3, 1, 5, 6)
    expected = (critic.w.flatten().norm() - 1) ** 2
    assert gradient_penalty(critic, real, fake).item() == pytest.approx(expected.item(), rel=1e-5)


def test_gradient_penalty_matches_a_direct_computation_on_a_conv_critic():
    torch.manual_seed(1)
    critic = WGANCritic(2, 1, channels=(4, 4), strides=(1, 2), input_size=8, fc=4)
    real, fake = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    generator = torch.Generator().manual_seed(9)
    penalty = gradient_penalty(critic, real, fake, generator)
    alpha = torch.rand((2, 1, 1, 1), generator=torch.Generator().manual_seed(9))
    direct = []
    for i in range(2):
        x = (alpha[i] * real[i:i + 1] + (1 - alpha[i]) * fake[i:i + 1]).requires_grad_(True)
        (g,) = torch.autograd.grad(critic(x).sum(), x)
        direct.append((g.norm() - 1) ** 2)
    assert penalty.item() == pytest.approx(torch.stack(direct).mean().item(), rel=1e-4)


def test_gradient_penalty_is_safe_for_a_zero_gradient_critic():
    critic = LinearCritic((1, 4, 4))
    with torch.no_grad():
        critic.w.zero_()  # grad_x D = 0 everywhere: the norm's derivative would be 0/0
    penalty = gradient_penalty(critic, torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4))
    penalty.backward()
    assert penalty.item() == pytest.approx(1.0, abs=1e-5)
    assert torch.isfinite(critic.w.grad).all()


@pytest.mark.parametrize("dims", [2, 3])
def test_gradient_penalty_in_2d_and_3d(dims):
    critic = WGANCritic(dims, 1, channels=(2, 2), strides=(1, 2), input_size=8, fc=4)
    penalty = gradient_penalty(critic, torch.rand(2, 1, *[8] * dims), torch.rand(2, 1, *[8] * dims))
    penalty.backward()
    grads = [p.grad for p in critic.parameters() if p.grad is not None]  # the last bias has none
    assert torch.isfinite(penalty) and len(grads) >= 5 and all(torch.isfinite(g).all() for g in grads)


def test_wgan_parts_follow_wgan_vgg():
    g = WGANCNN(2, 1, 1)
    convs = [m for m in g.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 8 and all(c.out_channels == 32 for c in convs[:-1]) and convs[-1].out_channels == 1
    d = WGANCritic(2, 1)
    d_convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in d_convs] == [64, 64, 128, 128, 256, 256]
    assert [c.stride[0] for c in d_convs] == [1, 2, 1, 2, 1, 2]
    assert d(torch.rand(2, 1, 64, 64)).shape == (2, 1)
    assert d.head[1].in_features == 256 * 8 * 8 and d.head[1].out_features == 1024


def test_critic_steps_per_generator_step(small_ct):
    calls = []

    class Counting(WGANCritic):
        def forward(self, x):
            calls.append(x.shape[0])
            return super().forward(x)

    class Plugin:
        @toolbox.hookimpl
        def register_discriminators(self, register):
            register("counting_critic", Counting)

    from toolbox.plugins import register_plugin, unregister_plugin

    plugin = Plugin()
    register_plugin(plugin)
    try:
        recipe = tiny_recipe(small_ct)
        recipe["generator"] = {"type": "wgan_cnn", "depth": 3, "width": 4}
        recipe["discriminator"] = {"type": "counting_critic", "channels": [4, 4], "strides": [1, 2],
                                   "input_size": 32, "fc": 8}
        recipe["losses"] = {"mse": {"type": "mse"}, "adv": {"type": "gan", "mode": "wgan", "weight": 0.1}}
        recipe["scheme"] = {"type": "wgan_gp", "n_critic": 3}
        checked = validate(recipe, "test")
        scheme = toolbox.build("schemes", checked["scheme"], parts=Parts(checked.data, "test", torch.device("cpu"), toolbox.plugin_registry()))
        assert scheme.batches_per_step == 3
        batches = [{"input": torch.rand(2, 1, 32, 32), "target": torch.rand(2, 1, 32, 32)} for _ in range(3)]
        terms = scheme.train_step(batches, 1)
    finally:
        unregister_plugin(plugin)
    # Per critic step: real, fake, interpolates (GP); then one look for the generator.
    assert len(calls) == 3 * 3 + 1
    assert {"l_d_gp", "l_d_real", "l_d_fake", "l_g_adv", "l_g_mse", "w_distance"} <= set(terms)


def test_wgan_criterion_signs():
    loss = toolbox.build("losses", {"type": "gan", "mode": "wgan"})
    scores = torch.tensor([[2.0], [4.0]])
    assert loss(scores, True, for_discriminator=True).item() == -3.0
    assert loss(scores, False, for_discriminator=True).item() == 3.0
    assert loss(scores, True, for_discriminator=False).item() == -3.0


# -- VGG19 -----------------------------------------------------------------------------------
def test_vgg19_layout_matches_torchvision():
    state = {f"features.{k}": v for k, v in vgg19_features().state_dict().items()}
    weights = {k: tuple(v.shape) for k, v in state.items() if k.endswith("weight")}
    assert weights == TORCHVISION_FEATURE_SHAPES
    names = layer_indices()
    assert [names[n] for n in ("conv1_1", "conv3_4", "conv5_4", "relu5_4", "pool5")] == [0, 16, 34, 35, 36]


def test_a_torchvision_format_file_loads_and_named_layers_have_their_channels(vgg_weights):
    loss = VGGPerceptualLoss(layers={"conv2_2": 0.5, "conv3_4": 1.0}, weights=str(vgg_weights))
    reference = torch.load(vgg_weights, weights_only=True)
    assert torch.equal(loss.features[16].weight, reference["features.16.weight"])
    feats = loss._features(loss._prepare(torch.rand(1, 1, 32, 32)))
    assert feats[7].shape[1] == 128 and feats[16].shape[1] == 256
    assert len(loss.features) == 17  # truncated after the deepest layer used


def test_perceptual_loss_on_grey_2d_and_3d(vgg_weights):
    loss = VGGPerceptualLoss(layers={"conv2_2": 1.0}, weights=str(vgg_weights))
    a = torch.rand(2, 1, 24, 24, requires_grad=True)
    value = loss(a, torch.rand(2, 1, 24, 24))
    value.backward()
    assert value > 0 and a.grad.abs().sum() > 0
    assert loss(a, a.detach()).item() == pytest.approx(0.0, abs=1e-6)
    volume = torch.rand(1, 1, 8, 20, 20)
    for axis in (0, 2, "all"):
        three_d = VGGPerceptualLoss(layers={"conv1_2": 1.0}, weights=str(vgg_weights), slice_axis=axis)
        assert torch.isfinite(three_d(volume, torch.rand(1, 1, 8, 20, 20)))


def _thin_slab_recipe(small_ct, tmp_path, patch, slice_axis):
    """A 3D recipe with the VGG perceptual loss at conv5_4 (needs 16x16 slices)."""
    import nibabel as nib

    for split in ("train", "val"):
        (tmp_path / split).mkdir(exist_ok=True)
        volume = np.asarray(nib.load(str(small_ct / split / next(p.name for p in (small_ct / split).iterdir()))).dataobj)
        nib.save(nib.Nifti1Image(np.repeat(volume[:64, :64], 12, axis=2), np.eye(4)), str(tmp_path / split / "v.nii.gz"))
    recipe = tiny_recipe(tmp_path)
    recipe["data"].update(spatial_dims=3, patch_size=patch)
    recipe["generator"] = {"type": "unet", "features": [4, 4, 4, 4, 4, 4]}
    del recipe["discriminator"]
    recipe["losses"] = {"pix": {"type": "l1"},
                        "vgg": {"type": "vgg_perceptual", "layers": {"conv5_4": 1.0}, "slice_axis": slice_axis}}
    recipe["optimizers"] = {"generator": {"type": "adam", "lr": 1e-3}}
    recipe["scheme"] = {"type": "supervised"}
    return write_recipe(tmp_path / "r.yaml", recipe)


def test_perceptual_loss_skips_orientations_too_thin_for_its_layer(small_ct, tmp_path, capsys):
    """A thin slab (8x48x48, as anisotropic CT gives): with slice_axis all, the 48x48 slices
    are used, the 8x48 ones skipped with a warning, and training runs."""
    recipe = _thin_slab_recipe(small_ct, tmp_path, [8, 48, 48], "all")
    with pytest.warns(UserWarning, match="too thin for conv5_4 across axis 1, 2"):
        assert main(["run", str(recipe), "--out", str(tmp_path / "run")]) == 0
    loss = VGGPerceptualLoss(layers={"conv5_4": 1.0}, random_weights=True)
    assert loss.usable_axes((8, 48, 48)) == (0,)
    assert torch.isfinite(loss(torch.rand(1, 1, 8, 48, 48), torch.rand(1, 1, 8, 48, 48)))


def test_perceptual_loss_too_deep_for_the_patch_is_one_line_at_recipe_check(small_ct, tmp_path, capsys):
    recipe = _thin_slab_recipe(small_ct, tmp_path, [8, 48, 48], 1)
    assert main(["recipe", "check", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "losses.vgg" in err
    assert "patch 8x48x48 is too thin for VGG19 layer conv5_4" in err and "at least 16" in err
    assert main(["run", str(recipe), "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()
    # A discriminator too deep for the slab is caught the same way (one forward pass at build).
    capsys.readouterr()
    assert main(["recipe", "check", str(recipe), "--set", "losses.vgg.slice_axis=0", "--set",
                 "discriminator={type: patchgan, base_filters: 4, num_layers: 2}", "--set",
                 "scheme={type: paired_gan}", "--set", "losses.adv={type: gan}", "--set",
                 "optimizers.discriminator={type: adam}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "key 'discriminator': cannot take patches of 8x48x48 (data.patch_size)" in err


def test_missing_weights_file_is_one_line_that_says_what_to_do(tmp_path, small_ct, monkeypatch, capsys):
    monkeypatch.delenv("TOOLBOX_VGG19_WEIGHTS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ToolboxError, match="toolbox weights vgg19"):
        VGGPerceptualLoss()
    recipe = tiny_recipe(small_ct)
    recipe["losses"]["vgg"] = {"type": "vgg_perceptual", "weights": str(tmp_path / "nope.pth")}
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.pth: no such VGG19 weights file" in err
    assert not (tmp_path / "run").exists()


def test_wrong_file_layout_is_refused(tmp_path):
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ToolboxError, match="not torchvision's VGG19 layout"):
        load_vgg19_state(tmp_path / "other.pth")


def test_weights_command_is_a_plugin_command():
    result = subprocess.run([sys.executable, "-m", "toolbox", "weights", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "vgg19" in result.stdout


# -- ResUNet ---------------------------------------------------------------------------------
def test_resunet_output_is_middle_slice_plus_residual():
    net = ResUNet(2, in_channels=5, out_channels=1, base_filters=4, levels=2).eval()
    x = torch.rand(1, 5, 20, 28)
    with torch.no_grad():
        out = net(x)
        residual = net.stages[0](torch.nn.functional.pad(x, (0, 0, 0, 0)))
    assert out.shape == (1, 1, 20, 28)
    assert torch.allclose(out, residual + x[:, 2:3], atol=1e-5)


def test_resunet_auto_context_refines_with_the_first_estimate():
    net = ResUNet(2, in_channels=3, out_channels=1, base_filters=4, levels=2, stages=2).eval()
    assert net.stages[1].down[0].block.body[0].in_channels == 3 + 1  # stack + estimate
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        first = net.stages[0](x) + x[:, 1:2]
        expected = net.stages[1](torch.cat([x, first], 1)) + x[:, 1:2]
        assert torch.allclose(net(x), expected, atol=1e-5)


def test_resunet_blocks():
    from toolbox_plugins.resunet import ConvBlock, ResidualUnit, UpResBlock

    block = ConvBlock(2, 3, 8)
    kinds = [type(m).__name__ for m in block.body]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU"]
    unit = ResidualUnit(2, 3, 8).eval()
    x = torch.rand(1, 3, 10, 10)
    assert torch.allclose(unit(x), unit.block(x) + unit.bridge(x))
    up = UpResBlock(2, 8, 4, 4)
    assert up(torch.rand(1, 8, 5, 5), torch.rand(1, 4, 12, 12)).shape == (1, 4, 10, 10)  # bridge cropped


def test_2_5d_data_pipeline_and_slice_by_slice_denoise(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path)
    recipe["data"].update(train=str(SAMPLES / "fluorescence3d" / "train"), val=str(SAMPLES / "fluorescence3d" / "test"),
                          context_slices=3, normalize={"type": "percentile"}, patch_size=[16, 16])
    recipe["generator"] = {"type": "resunet", "base_filters": 4, "levels": 2, "stages": 2}
    recipe["discriminator"] = {"type": "wgan_critic", "channels": [4, 4], "strides": [1, 2], "input_size": 16, "fc": 8}
    recipe["scheme"] = {"type": "paired_gan", "conditional": False}
    from toolbox import build_data

    bundle = build_data(validate(recipe, "test").data)
    sample = bundle.train[5]
    assert sample["input"].shape == (3, 16, 16) and sample["target"].shape == (1, 16, 16)
    # The target is the clean middle slice of the noisy stack's clean version.
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    stack = SAMPLES / "fluorescence3d" / "test" / "nuclei3d_test.tif"
    out = tmp_path / "den.tif"
    assert main(["denoise", str(tmp_path / "run"), str(stack), "-o", str(out)]) == 0
    result = tifffile.imread(out)
    assert result.shape == tifffile.imread(stack).shape and result.dtype == np.uint16
