"""The unconditional GAN scheme (seed 001, Algorithm 1) and denoising a run of it by latent search."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch

import toolbox
from conftest import write_recipe
from toolbox.cli import main

ROOT = Path(__file__).resolve().parents[1]
EM = ROOT / "samples" / "em"


def em_recipe(**sections) -> dict:
    """Seed 001's settings at toy size: 16x16 crops of the bundled micrographs."""
    recipe = {
        "name": "tiny_dcgan",
        "seed": 5,
        "data": {"train": str(EM / "train"), "val": str(EM / "test"), "spatial_dims": 2, "patch_size": [16, 16],
                 "normalize": {"type": "window", "low": 0, "high": 2},
                 "noise": {"type": "gaussian", "sigma": 0.05}},
        "generator": {"type": "dcgan_generator", "latent_dim": 8, "image_size": 16, "base_filters": 8},
        "discriminator": {"type": "dcgan_discriminator", "image_size": 16, "base_filters": 8},
        "losses": {"adv": {"type": "gan", "mode": "bce", "real_label": 0.9}},
        "optimizers": {"generator": {"type": "adam", "lr": 1e-4, "betas": [0.5, 0.999]},
                       "discriminator": {"type": "adam", "lr": 4e-4, "betas": [0.5, 0.999]}},
        "scheme": {"type": "unconditional_gan", "samples": 4},
        "inversion": {"starts": 2, "steps": 3, "max_steps": 3},
        "train": {"steps": 2, "batch_size": 4, "device": "cpu", "val_every": 2, "log_every": 1,
                  "checkpoint_every": 2, "val_max_images": 2},
    }
    recipe.update(sections)
    return recipe


def build(recipe: dict):
    return toolbox.build_scheme(toolbox.validate_recipe(recipe))


def test_the_optimisers_and_the_loss_see_the_seeds_settings():
    parts, scheme = build(em_recipe())
    (g,), (d,) = scheme.opt_g.param_groups, scheme.opt_d.param_groups
    assert (g["lr"], d["lr"]) == (1e-4, 4e-4)  # two time-scale update rule
    assert g["betas"][0] == d["betas"][0] == 0.5
    assert {id(p) for p in g["params"]} == {id(p) for p in scheme.generator.parameters()}
    assert {id(p) for p in d["params"]} == {id(p) for p in scheme.discriminator.parameters()}
    # The discriminator's terms: real patches against label 0.9, fakes against 0.
    torch.manual_seed(0)
    real = torch.rand(4, 1, 16, 16)
    fake = scheme.generate(real).detach()
    terms = scheme.discriminator_terms({"input": real, "target": real}, fake)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    with torch.no_grad():
        real_logits, fake_logits = scheme.discriminator(real), scheme.discriminator(fake)
    torch.testing.assert_close(terms["l_d_real"], bce(real_logits, torch.full_like(real_logits, 0.9)))
    torch.testing.assert_close(terms["l_d_fake"], bce(fake_logits, torch.zeros_like(fake_logits)))
    # The generator's term asks for label 1 on its fakes (no smoothing for G).
    term = scheme.adversarial_term({"input": real, "target": real}, fake)
    with torch.no_grad():
        torch.testing.assert_close(term, bce(scheme.discriminator(fake), torch.ones_like(fake_logits)))


def test_a_step_updates_both_networks_from_fresh_latents():
    parts, scheme = build(em_recipe())
    batch = {"input": torch.rand(4, 1, 16, 16), "target": torch.rand(4, 1, 16, 16)}
    g0 = [p.detach().clone() for p in scheme.generator.parameters()]
    d0 = [p.detach().clone() for p in scheme.discriminator.parameters()]
    terms = scheme.train_step([batch], 1)
    assert set(terms) == {"l_g_adv", "l_g_total", "l_d_real", "l_d_fake"}
    assert all(not torch.equal(a, b) for a, b in zip(g0, scheme.generator.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(d0, scheme.discriminator.parameters()))
    first = scheme.latents(3)
    assert not torch.equal(first, scheme.latents(3))
    grid = scheme.sample_grid(scheme.generator)
    assert grid.shape == (4, 1, 16, 16) and float(grid.min()) >= 0 and float(grid.max()) <= 1


@pytest.mark.parametrize("change, key, message", [
    ({"losses": {"adv": {"type": "gan", "mode": "bce"}, "pix": {"type": "l1"}}}, "losses", "no target"),
    ({"generator": {"type": "unet", "features": [4, 4, 4, 4, 4, 4]}}, "generator", "latent vectors"),
    ({"generator": {"type": "dcgan_generator", "latent_dim": 8, "image_size": 32, "base_filters": 8}},
     "generator", "image_size the patch size"),
])
def test_recipe_mistakes_are_one_line_errors(change, key, message):
    with pytest.raises(toolbox.RecipeError, match=message) as caught:
        build(em_recipe(**change))
    assert key in str(caught.value)


def test_inversion_settings_on_an_image_to_image_model_are_refused(small_ct):
    from conftest import tiny_recipe

    recipe = tiny_recipe(small_ct, inversion={"starts": 2})
    with pytest.raises(toolbox.RecipeError, match="inversion"):
        build(recipe)


def test_a_run_denoises_by_latent_search_and_keeps_the_geometry(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", em_recipe())), "--out", str(run)]) == 0
    assert (run / "figures" / "samples_step000002.png").is_file()
    # A 2D NIfTI image larger than the generator's 16x16 windows, with its own geometry.
    image = tifffile.imread(EM / "test" / "np_1001_000.tif")[:40, :52]
    affine = np.diag([0.05, 0.05, 1.0, 1.0])
    affine[:3, 3] = [1.5, -2.0, 0.0]
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), tmp_path / "em.nii.gz")
    capsys.readouterr()
    assert main(["denoise", str(run), str(tmp_path / "em.nii.gz"), "-o", str(tmp_path / "out.nii.gz")]) == 0
    assert "s)" in capsys.readouterr().out  # seconds per image
    out = nib.load(tmp_path / "out.nii.gz")
    assert out.shape == (40, 52) and np.allclose(out.affine, affine)
    values = out.get_fdata()
    assert np.isfinite(values).all() and 0 <= values.min() and values.max() <= 2.0 + 1e-6  # G draws in 0..1
    # --inversion replaces the recipe's settings; bad ones are one line.
    assert main(["denoise", str(run), str(tmp_path / "em.nii.gz"), "-o", str(tmp_path / "out2.nii.gz"),
                 "--inversion", "{loss: poisson, counts_per_unit: 50, starts: 1}"]) == 0
    assert main(["denoise", str(run), str(tmp_path / "em.nii.gz"), "-o", str(tmp_path / "x.nii.gz"),
                 "--inversion", "{stars: 3}"]) == 2
    assert "unknown setting(s) stars" in capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists()
    # evaluate scores the search like any model, with the same settings option.
    assert main(["evaluate", str(run), str(EM / "test" / "np_1001_001.tif"), "--noise", "{type: poisson, peak: 100}",
                 "--inversion", "{starts: 1, residual: shrink}", "-o", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "report.json").is_file()
    # A search per image cannot be exported: one line, nothing written.
    assert main(["export", str(run), "--format", "torchscript", "-o", str(tmp_path / "m.pt")]) == 2
    assert "searching the latent space" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_inversion_option_on_an_image_model_is_refused(percentile_model, small_ct, tmp_path, capsys):
    code = main(["denoise", str(percentile_model), str(small_ct / "val" / "spine.nii.gz"), "-o",
                 str(tmp_path / "o.nii.gz"), "--inversion", "{starts: 3}"])
    assert code == 2 and "latent" in capsys.readouterr().err


def test_resume_repeats_an_uninterrupted_run(tmp_path):
    # The latent draws are tracked: a resumed run draws what the uninterrupted one drew.
    recipe = write_recipe(tmp_path / "r.yaml", em_recipe(train={**em_recipe()["train"], "steps": 4}))
    assert main(["run", str(recipe), "--out", str(tmp_path / "straight")]) == 0
    assert main(["run", str(recipe), "--out", str(tmp_path / "resumed"), "train.steps=2"]) == 0
    assert main(["run", "--resume", str(tmp_path / "resumed"), "train.steps=4"]) == 0
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)
    for net, weights in a["scheme"]["modules"].items():
        for key, value in weights.items():
            torch.testing.assert_close(b["scheme"]["modules"][net][key], value, rtol=0, atol=0)


def test_two_ranks_train_it_under_torchrun(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", em_recipe())
    result = subprocess.run([sys.executable, "-m", "toolbox", "run", str(recipe), "--out", str(tmp_path / "ddp"),
                             "--nproc", "2"], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    payload = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=True)
    assert payload["world_size"] == 2 and payload["step"] == 2


def test_a_step_under_mixed_precision():
    parts, scheme = toolbox.build_scheme(toolbox.validate_recipe(em_recipe()), amp="bf16")
    assert parts.amp_dtype is torch.bfloat16
    batch = {"input": torch.rand(4, 1, 16, 16), "target": torch.rand(4, 1, 16, 16)}
    terms = scheme.train_step([batch], 1)
    assert all(torch.isfinite(v) for v in terms.values())
