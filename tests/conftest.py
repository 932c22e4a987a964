"""Shared fixtures: small real CT data, tiny recipes, and plugins registered for one test."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

import toolbox

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def small_ct(tmp_path_factory) -> Path:
    """Crops of the bundled real CT slices (HU): train/ (two 96x96) and val/ (one 72x88)."""
    root = tmp_path_factory.mktemp("small_ct")
    head = np.asarray(nib.load(str(SAMPLES / "ct" / "train" / "head.nii.gz")).dataobj)[..., 0]
    abdomen = np.asarray(nib.load(str(SAMPLES / "ct" / "train" / "abdomen.nii.gz")).dataobj)[..., 0]
    spine = np.asarray(nib.load(str(SAMPLES / "ct" / "test" / "spine.nii.gz")).dataobj)[..., 0]
    crops = {
        "train/head.nii.gz": head[200:296, 150:246],
        "train/abdomen.nii.gz": abdomen[220:316, 200:296],
        "val/spine.nii.gz": spine[200:272, 210:298],
    }
    for name, crop in crops.items():
        path = root / name
        path.parent.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(crop.astype(np.int16)[:, :, None], np.eye(4)), str(path))
    return root


def tiny_recipe(data_root: Path, **sections) -> dict:
    """A recipe that trains the pix2pix pair at toy size in a couple of seconds."""
    recipe = {
        "name": "tiny",
        "seed": 3,
        "data": {
            "train": str(data_root / "train"),
            "val": str(data_root / "val"),
            "spatial_dims": 2,
            "normalize": {"type": "window", "low": -1000, "high": 1000},
            "patch_size": [32, 32],
            "noise": {"type": "gaussian", "sigma": 0.1},
        },
        "generator": {"type": "pix2pix_unet", "num_downs": 5, "base_filters": 4},
        "discriminator": {"type": "patchgan", "base_filters": 4},
        "losses": {"pix": {"type": "l1", "weight": 100}, "adv": {"type": "gan", "mode": "bce"}},
        "optimizers": {
            "generator": {"type": "adam", "lr": 1e-3, "betas": [0.5, 0.999]},
            "discriminator": {"type": "adam", "lr": 1e-3, "betas": [0.5, 0.999]},
        },
        "scheme": {"type": "paired_gan"},
        "train": {"steps": 2, "batch_size": 2, "device": "cpu", "val_every": 1,
                  "log_every": 1, "checkpoint_every": 1},
    }
    for key, value in sections.items():
        recipe[key] = value
    return recipe


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def percentile_model(tmp_path_factory, small_ct):
    """A 2D model with per-image percentile normalisation (microscopy / X-ray style),
    trained for 2 steps: enough to exercise every input and output path."""
    from toolbox.cli import main

    root = tmp_path_factory.mktemp("pct_model")
    recipe = tiny_recipe(small_ct)
    recipe["data"]["normalize"] = {"type": "percentile"}
    recipe["generator"] = {"type": "unet", "features": [4, 4, 4, 4, 4, 4]}
    assert main(["run", str(write_recipe(root / "r.yaml", recipe)), "--out", str(root / "run")]) == 0
    return root / "run"


@pytest.fixture(scope="session")
def vgg_weights(tmp_path_factory) -> Path:
    """A torchvision-format VGG19 file (random weights, made here: no download)."""
    from toolbox_plugins.vgg import vgg19_features

    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in vgg19_features().state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)  # a full torchvision file has these too
    path = tmp_path_factory.mktemp("vgg") / "vgg19-dcbb9e9d.pth"
    torch.save(state, path)
    return path


@pytest.fixture(autouse=True)
def _vgg_weights_for_recipes(vgg_weights, monkeypatch):
    """Recipes that name `weights: auto` find the test file, as a user's cache would."""
    monkeypatch.setenv("TOOLBOX_VGG19_WEIGHTS", str(vgg_weights))


@pytest.fixture
def plugin_for_one_test():
    """Register an in-process plugin for this test only: ``plugin_for_one_test(module)``."""
    from toolbox.plugins import register_plugin, unregister_plugin

    added = []

    def add(plugin):
        register_plugin(plugin)
        added.append(plugin)
        return plugin

    yield add
    for plugin in added:
        unregister_plugin(plugin)


class RecordingDiscriminator(torch.nn.Module):
    """A real conv critic that records every input it is shown (2D)."""

    def __init__(self, spatial_dims, in_channels):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, 1, 3, padding=1)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.conv(x)


class RecordingPlugin:
    """Registers the discriminator ``recording``; add it with ``plugin_for_one_test``."""

    @toolbox.hookimpl
    def register_discriminators(self, register):
        register("recording", RecordingDiscriminator)


def tiny_3d_recipe(root: Path) -> dict:
    """A tiny 3D recipe on crops of the bundled MR volume (written under ``root``)."""
    mr = nib.load(str(SAMPLES / "mr3d" / "mni_t1_2mm.nii.gz"))
    data = np.asarray(mr.dataobj)
    for split, region in (("train", data[10:42, 20:52, 20:52]), ("val", data[40:64, 40:72, 30:54])):
        (root / split).mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(region, mr.affine), str(root / split / f"{split}.nii.gz"))
    recipe = tiny_recipe(root)
    recipe["data"].update(spatial_dims=3, patch_size=[16, 16, 16], normalize={"type": "percentile"},
                          noise={"type": "rician", "sigma": 0.05})
    recipe["generator"] = {"type": "unet", "features": [4, 4, 4, 4, 4, 4]}
    recipe["discriminator"] = {"type": "patchgan", "base_filters": 4, "num_layers": 2}
    return recipe


def _train_supervised(root: Path, data_root: Path, data: dict, generator: dict, loss: str) -> Path:
    """Train ``generator`` alone on ``loss`` for 300 steps (a model that really denoises)."""
    from toolbox.cli import main

    recipe = tiny_recipe(data_root)
    recipe["data"].update(data)
    recipe["generator"] = generator
    recipe["losses"] = {"pix": {"type": loss}}
    recipe["optimizers"] = {"generator": {"type": "adam", "lr": 2e-3}}
    recipe["scheme"] = {"type": "supervised"}
    del recipe["discriminator"]
    recipe["train"].update(steps=300, batch_size=8, val_every=300, checkpoint_every=300, log_every=50)
    assert main(["run", str(write_recipe(root / "r.yaml", recipe)), "--out", str(root / "run")]) == 0
    return root / "run"


@pytest.fixture(scope="session")
def denoising_ct_model(tmp_path_factory) -> Path:
    """A small residual U-Net that really denoises CT: trained for a few hundred steps on the
    two bundled training slices, HU -> -1000..1000 linearly, unclipped, 20-100 HU noise."""
    return _train_supervised(
        tmp_path_factory.mktemp("ct_denoiser"), SAMPLES / "ct",
        {"val": str(SAMPLES / "ct" / "test" / "chest_small.nii.gz"), "patch_size": [64, 64],
         "noise": {"type": "gaussian", "sigma": [0.01, 0.05]}},
        {"type": "unet", "features": [16, 16, 32, 32, 32, 16]}, "mse")


@pytest.fixture(scope="session")
def bounded_mr_model(tmp_path_factory) -> Path:
    """A 2D ADL denoiser with the paper's sigmoid heads (outputs bounded to 0..1), trained on
    slices of the bundled MR training slab (zero background) with percentile normalisation:
    the kind of model that hands a zero background back shifted if normalisation moves with
    the noise."""
    return _train_supervised(
        tmp_path_factory.mktemp("mr_denoiser"), SAMPLES / "mr3d",
        {"val": str(SAMPLES / "mr3d" / "test"), "patch_size": [48, 48], "normalize": {"type": "percentile"},
         "noise": {"type": "gaussian", "sigma": [0.02, 0.15]}},
        {"type": "efficient_unet", "filters": [8, 12, 16], "bridge": 16, "enhancer_kernel": 3,
         "norm": "none", "output": "sigmoid"}, "l1")
