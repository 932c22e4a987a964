"""Pretrained models by name: packing a run, registering it, denoising with --model NAME."""

from __future__ import annotations

import json
import types

import nibabel as nib
import numpy as np
import pytest
import torch

import toolbox
import toolbox.testing as contract
from conftest import tiny_recipe, write_recipe
from toolbox.cli import main

CARD = """# tiny_ct: A two-step CT model for tests.

Trained for two steps.

## Training data
Crops of the bundled CT slices.

## Noise
Gaussian, 0.1 of the window.

## Intended use
Tests only.

## Limits
Everything.
"""


@pytest.fixture(scope="module")
def packed(tmp_path_factory, small_ct):
    root = tmp_path_factory.mktemp("packed")
    recipe = write_recipe(root / "r.yaml", tiny_recipe(small_ct))
    assert main(["run", str(recipe), "--out", str(root / "run")]) == 0
    assert main(["models", "pack", str(root / "run"), "-o", str(root / "tiny_ct.pt")]) == 0
    (root / "tiny_ct.md").write_text(CARD, encoding="utf-8")
    return root


def _plugin(path):
    plugin = types.SimpleNamespace()

    @toolbox.hookimpl
    def register_models(register):
        register("tiny_ct", lambda: path)

    plugin.register_models = register_models
    return plugin


def test_a_packed_model_is_half_precision_and_denoises_like_its_run(packed, small_ct, tmp_path):
    payload = torch.load(packed / "tiny_ct.pt", weights_only=True)
    weights = payload["scheme"]["modules"]["generator"]
    assert all(v.dtype == torch.float16 for v in weights.values() if v.is_floating_point())
    assert "optimizers" not in payload["scheme"]
    assert (packed / "tiny_ct.pt").stat().st_size < (packed / "run" / "checkpoints" / "best.pt").stat().st_size / 2
    image = small_ct / "val" / "spine.nii.gz"
    for model, out in ((packed / "run", tmp_path / "full.nii.gz"), (packed / "tiny_ct.pt", tmp_path / "half.nii.gz")):
        assert main(["denoise", str(model), str(image), "-o", str(out)]) == 0
    full, half = (np.asarray(nib.load(str(tmp_path / n)).dataobj, dtype=np.float64) for n in ("full.nii.gz", "half.nii.gz"))
    assert np.abs(full - half).max() <= 2.0  # HU, int16 output: fp16 weights change little


def test_a_registered_model_is_listed_checked_and_used_by_name(packed, small_ct, tmp_path, capsys,
                                                                plugin_for_one_test):
    plugin_for_one_test(_plugin(packed / "tiny_ct.pt"))
    contract.check_model("tiny_ct")
    assert main(["models", "--json"]) == 0
    listed = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert listed["tiny_ct"]["dims"] == "2D" and listed["tiny_ct"]["summary"] == "A two-step CT model for tests."
    out = tmp_path / "spine.nii.gz"
    assert main(["denoise", "--model", "tiny_ct", str(small_ct / "val" / "spine.nii.gz"), "-o", str(out)]) == 0
    assert out.is_file()
    assert main(["evaluate", "--model", "tiny_ct", str(small_ct / "val"), "-o", str(tmp_path / "eval")]) == 0
    capsys.readouterr()
    assert main(["denoise", "--model", "tiny_cx", str(small_ct / "val"), "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "Unknown pretrained model 'tiny_cx'" in err and "Did you mean 'tiny_ct'" in err
    assert main(["denoise", str(packed / "run"), "-o", str(tmp_path / "y.nii.gz")]) == 2
    assert "give MODEL" in capsys.readouterr().err


def test_a_model_without_a_card_fails_its_contract(packed, tmp_path, plugin_for_one_test):
    bare = tmp_path / "bare.pt"
    bare.write_bytes((packed / "tiny_ct.pt").read_bytes())
    plugin_for_one_test(_plugin(bare))
    with pytest.raises(AssertionError, match="no model card"):
        contract.check_model("tiny_ct")


def test_a_run_can_start_from_a_pretrained_model(packed, small_ct, tmp_path, capsys, plugin_for_one_test):
    plugin_for_one_test(_plugin(packed / "tiny_ct.pt"))
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(small_ct))
    # Zero steps of learning (lr 0): the run's first checkpoint holds the model it started from.
    assert main(["run", str(recipe), "train.init_from=tiny_ct", "optimizers.generator.lr=0.0",
                 "--out", str(tmp_path / "run")]) == 0
    start = torch.load(packed / "tiny_ct.pt", weights_only=True)["scheme"]["modules"]["generator"]
    after = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    after = after["scheme"]["modules"][after["generator_module"]]
    for key, value in start.items():
        if value.is_floating_point() and "running" not in key:
            assert torch.equal(after[key], value.float()), key
    capsys.readouterr()
    assert main(["run", str(recipe), "train.init_from=tiny_ct", "generator.base_filters=8",
                 "--out", str(tmp_path / "other")]) == 2
    assert "key 'train.init_from': the generator" in capsys.readouterr().err


def test_interpolate_takes_a_pretrained_model_by_name(packed, tmp_path, plugin_for_one_test):
    """As ct_texture.yaml tells users: `toolbox interpolate ct RUN --alpha 0.5 -o C`."""
    plugin_for_one_test(_plugin(packed / "tiny_ct.pt"))
    out = tmp_path / "half.pt"
    assert main(["interpolate", "tiny_ct", str(packed / "run"), "--alpha", "0.5", "-o", str(out)]) == 0
    assert torch.load(out, weights_only=True)["interpolated"]["first"] == str(packed / "tiny_ct.pt")


def test_a_hosted_model_is_downloaded_once_hash_checked_and_cached(packed, small_ct, tmp_path, monkeypatch,
                                                                   capsys, plugin_for_one_test):
    """register_models may give an address and a SHA-256 instead of a file: the first use
    fetches it (a file:// address here: no network in tests), later ones read the cache;
    a wrong hash keeps nothing; offline, the error says where the file goes."""
    import hashlib

    monkeypatch.setenv("TOOLBOX_CACHE", str(tmp_path / "cache"))
    source = packed / "tiny_ct.pt"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    hosted = {"good": toolbox.HostedModel(url=source.as_uri(), sha256=digest, card=CARD),
              "bad": toolbox.HostedModel(url=source.as_uri(), sha256="0" * 64, filename="bad.pt")}
    plugin = types.SimpleNamespace()

    @toolbox.hookimpl
    def register_models(register):
        for name, entry in hosted.items():
            register(f"hosted_{name}", lambda entry=entry: entry)

    plugin.register_models = register_models
    plugin_for_one_test(plugin)
    out = tmp_path / "out.nii.gz"
    assert main(["denoise", "--model", "hosted_good", str(small_ct / "val" / "spine.nii.gz"), "-o", str(out)]) == 0
    (cached,) = (tmp_path / "cache" / "models").rglob("*.pt")
    assert cached.read_bytes() == source.read_bytes() and cached.with_suffix(".md").read_text() == CARD
    source_mtime = cached.stat().st_mtime_ns
    assert main(["models", "--json"]) == 0 and "hosted_good" in capsys.readouterr().out
    assert cached.stat().st_mtime_ns == source_mtime  # read from the cache, not fetched again

    assert main(["denoise", "--model", "hosted_bad", str(small_ct / "val" / "spine.nii.gz"),
                 "-o", str(tmp_path / "bad.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "SHA-256" in err and "nothing was kept" in err and len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "cache" / "models").rglob("bad.pt")) and not (tmp_path / "bad.nii.gz").exists()

    monkeypatch.setenv("TOOLBOX_OFFLINE", "1")
    cached.unlink()
    assert main(["export", "--model", "hosted_good", "--format", "torchscript", "-o", str(tmp_path / "e.pt")]) == 2
    err = capsys.readouterr().err
    assert "TOOLBOX_OFFLINE" in err and str(cached) in err
