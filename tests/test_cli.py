"""The CLI end to end: run, list, plugins, recipe check, and one-line user errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, tiny_recipe, write_recipe
from toolbox.checkpoint import generator_weights
from toolbox.cli import main

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def toolbox_process(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "toolbox", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


def test_run_writes_a_complete_run_folder(tmp_path, small_ct, capsys):
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe(small_ct))
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "train.steps=2"]) == 0
    printed = capsys.readouterr().out
    assert "Held-out images" in printed and "spine.nii.gz" in printed
    for name in ("recipe.yaml", "run.json", "metrics.jsonl", "eval.json",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (out / name).is_file(), name
    info = json.loads((out / "run.json").read_text())
    assert info["seed"] == 3 and "pix2pix" in info["plugins"] and info["device"] == "cpu"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "val"}
    assert any("l_d_real" in r for r in records)
    checkpoint = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["step"] == 2 and checkpoint["recipe"]["train"]["steps"] == 2
    report = json.loads((out / "eval.json").read_text())
    assert report["images"][0]["data_range"] == 2000.0 and report["images"][0]["name"] == "spine.nii.gz"
    assert "window -1000..1000" in report["data_range"]
    # The strongest classical denoiser at hand, on the same noisy image, given the true noise
    # SD: a real denoising of it, well above the noisy input.
    reference = report["images"][0]["reference"]
    assert reference["method"] in ("non-local means", "BM3D") and "vs " in printed
    assert reference["psnr"] > report["images"][0]["psnr_noisy"] + 5
    assert reference["sigma"] == pytest.approx(tiny_recipe(small_ct)["data"]["noise"]["sigma"] * 2000, rel=0.05)
    # The held-out files hold what was scored: float32 HU, noise not clipped or rounded.
    import nibabel as nib

    noisy = nib.load(str(out / "held_out" / "noisy_spine.nii.gz"))
    assert noisy.get_data_dtype() == np.float32 and not np.allclose(noisy.get_fdata(), np.rint(noisy.get_fdata()))


def test_run_is_reproducible_from_its_seed(tmp_path, small_ct):
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe(small_ct))
    for name in ("a", "b"):
        assert main(["run", str(recipe), "--out", str(tmp_path / name)]) == 0
    a = generator_weights(torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True))
    b = generator_weights(torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_resolved_recipe_reruns(tmp_path, small_ct):
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe(small_ct))
    assert main(["run", str(recipe), "--out", str(tmp_path / "first")]) == 0
    assert main(["run", str(tmp_path / "first" / "recipe.yaml"), "--out", str(tmp_path / "again")]) == 0


def test_unknown_generator_is_one_line_without_traceback_and_no_run_folder(tmp_path):
    result = toolbox_process("run", ROOT / "recipes" / "pix2pix_ct.yaml", "generator.type=unte",
                             "--out", tmp_path / "run")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("Error: ") and "Did you mean 'unet'?" in lines[0]
    assert not (tmp_path / "run").exists()


def test_existing_run_folder_is_not_overwritten(tmp_path, small_ct, capsys):
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe(small_ct))
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    assert main(["run", str(recipe), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep"


def test_missing_data_folder_is_a_user_error(tmp_path, small_ct, capsys):
    recipe = tiny_recipe(small_ct)
    recipe["data"]["train"] = str(tmp_path / "missing")
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and "missing: no such file or folder" in err
    assert not (tmp_path / "run").exists()


def test_list_and_list_json(capsys):
    assert main(["list", "generators", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert "pix2pix_unet" in listing["generators"]
    assert listing["generators"]["pix2pix_unet"]["options"]["num_downs"] == "7"
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "patchgan" in out and "gaussian" in out and "paired_gan" in out
    assert main(["list", "generatorz"]) == 2
    assert "Did you mean 'generators'" in capsys.readouterr().err


def test_plugins_json(capsys):
    assert main(["plugins", "--json"]) == 0
    plugins = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert plugins["pix2pix"]["hooks"] == ["register_discriminators", "register_generators"]
    assert plugins["pix2pix"]["source"] == "built-in"


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_shipped_recipe_checks(recipe, capsys):
    assert main(["recipe", "check", str(recipe)]) == 0
    assert capsys.readouterr().out.startswith(f"OK {recipe}")


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_shipped_recipe_runs_two_steps(recipe, tmp_path):
    overrides = ["train.steps=2", "train.val_every=2", "train.val_max_images=1"]
    # A recipe whose set-up is slow (low-dose CT draws its noisy copies first) has a `quick` profile.
    quick = ["--profile", "quick"] if "quick:" in recipe.read_text(encoding="utf-8") else []
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), *quick, *overrides]) == 0


def test_cli_starts_without_importing_torch():
    code = "import sys; from toolbox.cli import main; main(['--version']) if False else None; " \
           "print('torch' in sys.modules, 'monai' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False False"
