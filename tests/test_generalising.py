"""Generators that generalise: bias-free U-Net, noise-level maps, weight averages (EMA),
test-time self-ensembles (issue 13, part 1)."""

from __future__ import annotations

import numpy as np
import nibabel as nib
import pytest
import torch

from conftest import tiny_recipe, write_recipe
from toolbox.cli import main
from toolbox.self_ensemble import SelfEnsemble, symmetries


def _unet(map=False, **options):
    import toolbox

    registry = toolbox.plugin_registry()
    return registry.build("generators", {"type": "unet", "features": [4, 4, 8, 8, 8, 4], **options}, "test",
                          "generator", spatial_dims=2, in_channels=1, out_channels=1,
                          **({"noise_level_map": True} if map else {}))


def test_a_bias_free_unet_is_scale_equivariant_with_and_without_a_noise_map():
    torch.manual_seed(0)
    for network, channels in ((_unet(bias=False), 1), (_unet(bias=False, map=True), 2)):
        assert not [name for name, _ in network.named_parameters() if name.endswith("bias")]
        x = torch.randn(2, channels, 24, 20)
        assert torch.allclose(network(2.5 * x), 2.5 * network(x), atol=1e-5)
    with_bias = _unet()
    x = torch.randn(1, 1, 16, 16)
    assert not torch.allclose(with_bias(2.5 * x), 2.5 * with_bias(x), atol=1e-3)
    with pytest.raises(Exception, match="bias: false needs norm: none"):
        _unet(bias=False, norm="batch")


def test_self_ensemble_inverts_every_symmetry_and_averages_the_kernels():
    # The identity network comes back unchanged through all 8 (2D) / 48 (3D) symmetries,
    # on shapes that are not square / cubic.
    for dims, shape in ((2, (1, 2, 6, 9)), (3, (1, 1, 4, 5, 7))):
        x = torch.randn(shape)
        assert len(symmetries(dims)) == (8 if dims == 2 else 48)
        assert torch.allclose(SelfEnsemble(torch.nn.Identity(), dims, len(symmetries(dims)))(x), x)
    # A convolution with a lopsided kernel, averaged over the square's 8 symmetries, is the
    # convolution with the kernel averaged over those symmetries.
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    kernel = conv.weight.detach()[0, 0]
    orbit = [torch.rot90(k, r) for k in (kernel, kernel.flip(1)) for r in range(4)]
    symmetric = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    symmetric.weight.data[0, 0] = torch.stack(orbit).mean(0)
    x = torch.randn(1, 1, 11, 11)
    with torch.no_grad():
        assert torch.allclose(SelfEnsemble(conv, 2, 8)(x), symmetric(x), atol=1e-5)
        assert not torch.allclose(conv(x), symmetric(x), atol=1e-3)


def _conditional_recipe(small_ct, tmp_path, **train):
    recipe = tiny_recipe(small_ct)
    recipe["data"].update(noise={"type": "gaussian", "sigma": [0.0, 0.1]}, noise_level_map=True)
    recipe.update(generator={"type": "unet", "features": [4, 4, 8, 8, 8, 4], "bias": False},
                  losses={"pix": {"type": "l1"}}, optimizers={"generator": {"type": "adam", "lr": 1e-3}},
                  scheme={"type": "supervised"}, discriminator=None)
    recipe["train"].update(steps=4, val_every=2, checkpoint_every=2, **train)
    return write_recipe(tmp_path / "conditional.yaml", recipe)


def test_training_patches_carry_their_measured_noise_level(small_ct):
    import toolbox

    recipe = toolbox.validate_recipe(_conditional_recipe_dict(small_ct))
    data = toolbox.build_data(recipe.data, toolbox.plugin_registry())
    for index in range(6):
        sample = data.train[index]
        assert sample["input"].shape[0] == 2 and sample["target"].shape[0] == 1
        level = sample["input"][1]
        assert torch.all(level == level.flatten()[0])  # constant
        rms = torch.sqrt(torch.mean((sample["input"][0].double() - sample["target"][0].double()) ** 2))
        assert float(level.flatten()[0]) == pytest.approx(float(rms), rel=1e-5)


def test_with_noisy_references_the_level_adds_their_own_noise(small_ct):
    """Real scanner / camera references carry noise of their own; in use the estimate sees
    it with the added noise, so training must give the same total."""
    import toolbox
    from toolbox.infer import estimated_sigma

    raw = _conditional_recipe_dict(small_ct)
    raw["data"]["reference_noise"] = True
    recipe = toolbox.validate_recipe(raw)
    data = toolbox.build_data(recipe.data, toolbox.plugin_registry())
    own = data.train.reference_levels
    assert len(own) == len(data.train.clean) and all(level > 0 for level in own)
    assert own[0] == pytest.approx(estimated_sigma(data.train.clean[0]))
    for index in range(6):
        sample = data.train[index]
        rms = float(torch.sqrt(torch.mean((sample["input"][0].double() - sample["target"][0].double()) ** 2)))
        level = float(sample["input"][1].flatten()[0])
        assert any(level == pytest.approx(float(np.hypot(rms, r)), rel=1e-5) for r in own)
    raw["data"]["noise_level_map"] = False
    with pytest.raises(toolbox.RecipeError, match="noise_level_map: true too"):
        toolbox.validate_recipe(raw)


def _conditional_recipe_dict(small_ct):
    recipe = tiny_recipe(small_ct)
    recipe["data"].update(noise={"type": "gaussian", "sigma": [0.0, 0.1]}, noise_level_map=True)
    return recipe


def test_a_noise_conditional_model_trains_denoises_at_a_given_or_estimated_level(small_ct, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", str(_conditional_recipe(small_ct, tmp_path, ema=0.9)), "--out", str(run)]) == 0
    payload = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert payload["ema"]["count"] == 4  # the average went into the checkpoint ...
    from toolbox.checkpoint import generator_weights

    assert generator_weights(payload) is payload["ema"]["weights"]  # ... and is what inference loads
    image = small_ct / "val" / "spine.nii.gz"
    outputs = {}
    for name, extra in (("estimated", []), ("low", ["--sigma", "1"]), ("high", ["--sigma", "400"]),
                        ("ensemble", ["--sigma", "400", "--ensemble", "8"])):
        out = tmp_path / f"{name}.nii.gz"
        assert main(["denoise", str(run), str(image), "-o", str(out), *extra]) == 0
        outputs[name] = np.asarray(nib.load(str(out)).dataobj, dtype=np.float64)
    assert "noise SD estimated at" in capsys.readouterr().out
    # The level is an input: a different level gives a different output.
    assert np.abs(outputs["low"] - outputs["high"]).max() > 1e-3
    assert np.abs(outputs["ensemble"] - outputs["high"]).max() > 1e-4
    # evaluate scores it with the estimated level and, asked, with the true one.
    assert main(["evaluate", str(run), str(small_ct / "val"), "--true-sigma", "--ensemble", "2",
                 "-o", str(tmp_path / "eval")]) == 0
    methods = {row["method"].split(" (")[0] for row in __import__("json").loads(
        (tmp_path / "eval" / "report.json").read_text())["rows"]}
    assert {"model", "model, true sigma", "model x2"} <= methods


def test_resuming_a_run_with_a_weight_average_continues_it_exactly(small_ct, tmp_path):
    recipe = _conditional_recipe(small_ct, tmp_path, ema=0.9)
    assert main(["run", str(recipe), "train.steps=6", "--out", str(tmp_path / "straight")]) == 0
    assert main(["run", str(recipe), "--out", str(tmp_path / "part")]) == 0
    assert main(["run", "--resume", str(tmp_path / "part"), "train.steps=6"]) == 0
    straight = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)["ema"]
    resumed = torch.load(tmp_path / "part" / "checkpoints" / "last.pt", weights_only=True)["ema"]
    assert straight["count"] == resumed["count"] == 6
    for key, value in straight["weights"].items():
        assert torch.equal(value, resumed["weights"][key]), key


@pytest.mark.parametrize("setting, message", [
    (["train.ema=1.5"], "'train.ema': a decay between 0 and 1"),
    (["generator={type: pix2pix_unet, num_downs: 5, base_filters: 4}"], "cannot take a noise-level map"),
    (["data.noise={type: none}"], "measures the noise of each training patch"),
])
def test_settings_that_cannot_work_are_one_line_errors(small_ct, tmp_path, capsys, setting, message):
    recipe = _conditional_recipe(small_ct, tmp_path)
    assert main(["run", str(recipe), *setting, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "run").exists()


def test_sigma_for_a_model_that_is_not_noise_conditional_is_refused(small_ct, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", tiny_recipe(small_ct))), "--out", str(run)]) == 0
    out = tmp_path / "out.nii.gz"
    image = small_ct / "val" / "spine.nii.gz"
    assert main(["denoise", str(run), str(image), "-o", str(out), "--sigma", "20"]) == 2
    assert "not noise-conditional" in capsys.readouterr().err
    assert main(["denoise", str(run), str(image), "-o", str(out), "--ensemble", "9"]) == 2
    assert "--ensemble must be 1..8" in capsys.readouterr().err
    assert main(["evaluate", str(run), str(small_ct / "val"), "--true-sigma", "-o", str(tmp_path / "e")]) == 2
    assert "for noise-conditional models" in capsys.readouterr().err
    assert not out.exists()


def test_interpolating_two_models_blends_their_weights(small_ct, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(small_ct))
    for name, seed in (("a", "seed=1"), ("b", "seed=2")):
        assert main(["run", str(recipe), seed, "--out", str(tmp_path / name)]) == 0
    from toolbox.checkpoint import generator_weights

    weights = {}
    for alpha in (0.0, 0.25, 1.0):
        out = tmp_path / f"mix{alpha}.pt"
        assert main(["interpolate", str(tmp_path / "a"), str(tmp_path / "b"), "--alpha", str(alpha),
                     "-o", str(out)]) == 0
        weights[alpha] = generator_weights(torch.load(out, weights_only=True))
    ends = [generator_weights(torch.load(tmp_path / n / "checkpoints" / "best.pt", weights_only=True)) for n in "ab"]
    for key, value in ends[0].items():
        if value.is_floating_point():
            assert torch.equal(weights[0.0][key], value) and torch.equal(weights[1.0][key], ends[1][key])
            assert torch.allclose(weights[0.25][key], 0.75 * value + 0.25 * ends[1][key], atol=1e-6)
    image = small_ct / "val" / "spine.nii.gz"
    assert main(["denoise", str(tmp_path / "mix0.25.pt"), str(image), "-o", str(tmp_path / "o.nii.gz")]) == 0
    # Different generators cannot be averaged; nor can a model with itself into its own file.
    assert main(["run", str(recipe), "generator.base_filters=8", "--out", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    assert main(["interpolate", str(tmp_path / "a"), str(tmp_path / "c"), "--alpha", "0.5",
                 "-o", str(tmp_path / "bad.pt")]) == 2
    assert "the generator" in capsys.readouterr().err and not (tmp_path / "bad.pt").exists()
    assert main(["interpolate", str(tmp_path / "a"), str(tmp_path / "b"), "--alpha", "1.5",
                 "-o", str(tmp_path / "bad.pt")]) == 2


def test_a_noise_mixture_draws_each_model_as_often_as_weighted():
    import toolbox

    mixture = toolbox.build("noise_models", {"type": "mixture", "weights": [3, 1],
                                             "of": [{"type": "gaussian", "sigma": 0.1}, {"type": "rician", "sigma": 0.1}]})
    generator = torch.Generator().manual_seed(0)
    zeros = torch.zeros(1, 16, 16)
    # Gaussian noise on a zero image goes negative; Rician (a magnitude) never does.
    gaussian = sum(bool((mixture(zeros, generator) < 0).any()) for _ in range(400))
    assert 270 < gaussian < 330


@pytest.mark.parametrize("setting, message", [
    ("data.noise={type: mixture, of: [{type: gaussian, sigma: 0.1}]}", "at least two noise models"),
    ("data.noise={type: mixture, of: [{type: gaussian, sigma: 0.1}, {type: gausian}]}", "gausian"),
    ("data.noise={type: mixture, of: [{type: gaussian}, {type: none}]}", "normalised images"),
])
def test_a_noise_mixture_that_cannot_work_is_a_one_line_error(small_ct, tmp_path, capsys, setting, message):
    recipe = _conditional_recipe(small_ct, tmp_path)
    assert main(["run", str(recipe), setting, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "run").exists()


def test_the_level_given_to_a_model_trained_on_rician_noise_reads_the_background_right():
    """Magnitude MR: the Rayleigh background made the Gaussian estimate a third low, and
    the model then left strong noise in place.  A model trained on Rician noise gets the
    background estimate; one that was not is unchanged, and Gaussian noise is unaffected."""
    from conftest import SAMPLES
    from toolbox.infer import estimated_sigma

    clean = np.asarray(nib.load(str(SAMPLES / "mr3d" / "test" / "mni_t1_2mm_z52-80.nii.gz")).dataobj,
                       dtype=np.float32)[None]
    rng = np.random.default_rng(0)
    rician_model = {"type": "mixture", "of": [{"type": "rician", "sigma": 0.1}, {"type": "gaussian", "sigma": 0.1}]}
    for sd in (3.0, 30.0):
        magnitude = np.hypot(clean + rng.normal(0, sd, clean.shape), rng.normal(0, sd, clean.shape))
        assert estimated_sigma(magnitude, rician_model) == pytest.approx(sd, rel=0.1)
        assert estimated_sigma(magnitude, {"type": "gaussian"}) < 0.8 * sd  # what it was before
        gaussian = clean + rng.normal(0, sd, clean.shape)
        assert estimated_sigma(gaussian, rician_model) == pytest.approx(sd, rel=0.15)
