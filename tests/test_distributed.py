"""Several processes: ``torchrun`` (and the ``--nproc`` shortcut) with 2 CPU ranks on gloo."""

from __future__ import annotations

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import tiny_recipe, write_recipe
from toolbox.cli import main

# Each rank gets one thread: 2 ranks on the 2 cores CI has.
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _toolbox(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolbox", *args], capture_output=True, text=True,
                          env=ENV, timeout=600)


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", "-m", "toolbox", *args],
                          capture_output=True, text=True, env=ENV, timeout=600)


def _supervised(small_ct, tmp_path, batch_size):
    recipe = tiny_recipe(small_ct, scheme={"type": "supervised"}, losses={"pix": {"type": "l1"}},
                         generator={"type": "unet", "features": [4, 4, 8, 8, 8, 4]})
    del recipe["discriminator"], recipe["optimizers"]["discriminator"]
    recipe["train"].update(steps=3, batch_size=batch_size, val_every=3, checkpoint_every=3)
    return write_recipe(tmp_path / f"supervised_b{batch_size}.yaml", recipe)


def _checkpoint(run_dir, name="last"):
    return torch.load(run_dir / "checkpoints" / f"{name}.pt", weights_only=True)


def _weights(payload):
    from toolbox.checkpoint import generator_weights

    return generator_weights(payload)


def test_two_ranks_train_what_one_process_trains_with_twice_the_batch(small_ct, tmp_path):
    # Rank r takes the r-th half of every global batch and DDP averages the gradients, so
    # 2 ranks x batch 2 make the same updates as 1 process x batch 4 (no batch statistics
    # in this network; augmentation and noise are functions of the sample index).
    result = _toolbox("run", str(_supervised(small_ct, tmp_path, 2)), "--out", str(tmp_path / "ddp"),
                      "--nproc", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert main(["run", str(_supervised(small_ct, tmp_path, 4)), "--out", str(tmp_path / "one")]) == 0
    ddp, one = _checkpoint(tmp_path / "ddp"), _checkpoint(tmp_path / "one")
    assert ddp["world_size"] == 2 and len(ddp["rng_ranks"]) == 2
    assert not any(key.startswith("module.") for key in _weights(ddp))  # loads without DDP
    for key, value in _weights(one).items():
        torch.testing.assert_close(_weights(ddp)[key], value, rtol=0, atol=1e-6)
    # The report comes once, from rank 0; the DDP checkpoint denoises in a single process.
    assert result.stdout.count("Run folder:") == 1
    assert main(["denoise", str(tmp_path / "ddp"), str(small_ct / "val" / "spine.nii.gz"),
                 "-o", str(tmp_path / "spine.nii.gz")]) == 0


@pytest.mark.parametrize("scheme", ["adl", "wgan_gp"])
def test_adversarial_schemes_train_under_torchrun(scheme, small_ct, tmp_path):
    # The checkpoint step gathers a fingerprint of every network from every rank and
    # fails if they differ, so a clean exit means the ranks stayed identical.
    if scheme == "adl":
        recipe = tiny_recipe(
            small_ct,
            generator={"type": "efficient_unet", "filters": [4, 4, 8], "bridge": 8, "enhancer_kernel": 3},
            discriminator={"type": "efficient_unet_discriminator", "filters": [4, 4, 8], "bridge": 8},
            losses={"fidelity": {"type": "adl", "levels": 2}, "adv": {"type": "gan", "mode": "hinge", "weight": 0.01}},
            scheme={"type": "adl", "warmup_g": 1, "warmup_d": 1, "d_every": 1})
    else:
        recipe = tiny_recipe(
            small_ct, generator={"type": "wgan_cnn", "depth": 3, "width": 4},
            discriminator={"type": "wgan_critic", "channels": [4, 4, 8, 8, 8, 8], "input_size": 32, "fc": 8},
            losses={"mse": {"type": "mse"}, "adv": {"type": "gan", "mode": "wgan", "weight": 1e-3}},
            scheme={"type": "wgan_gp", "n_critic": 2})
    recipe["train"].update(steps=4, val_every=2, checkpoint_every=2)
    path = write_recipe(tmp_path / "r.yaml", recipe)
    result = _torchrun("run", str(path), "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert _checkpoint(tmp_path / "run")["step"] == 4


def test_resume_under_torchrun_restores_every_ranks_random_state(small_ct, tmp_path):
    # pix2pix has dropout (global torch RNG) and BatchNorm: a resumed 2-rank run repeats
    # the uninterrupted one only if each rank gets its own random state back.
    recipe = tiny_recipe(small_ct)
    recipe["train"].update(steps=4, val_every=2, checkpoint_every=2)
    path = write_recipe(tmp_path / "r.yaml", recipe)
    straight = _torchrun("run", str(path), "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = _torchrun("run", str(path), "--out", str(tmp_path / "resumed"), "train.steps=2")
    assert first.returncode == 0, first.stderr[-3000:]
    rest = _torchrun("run", "--resume", str(tmp_path / "resumed"), "train.steps=4")
    assert rest.returncode == 0, rest.stderr[-3000:]
    a, b = _checkpoint(tmp_path / "straight"), _checkpoint(tmp_path / "resumed")
    assert b["step"] == 4
    for net, weights in a["scheme"]["modules"].items():
        for key, value in weights.items():
            torch.testing.assert_close(b["scheme"]["modules"][net][key], value, rtol=0, atol=0)


def test_denoise_splits_inputs_across_ranks(percentile_model, small_ct, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    source = nib.load(str(small_ct / "val" / "spine.nii.gz"))
    for i in range(3):  # three different images, so that a mix-up would show
        data = np.asarray(source.dataobj).astype(np.int16) + np.int16(100 * i)
        nib.save(nib.Nifti1Image(data, source.affine), str(inputs / f"case{i}.nii.gz"))
    result = _toolbox("denoise", str(percentile_model), str(inputs), "-o", str(tmp_path / "two"),
                      "--nproc", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert main(["denoise", str(percentile_model), str(inputs), "-o", str(tmp_path / "one")]) == 0
    for i in range(3):
        two = np.asarray(nib.load(str(tmp_path / "two" / f"case{i}.nii.gz")).dataobj)
        one = np.asarray(nib.load(str(tmp_path / "one" / f"case{i}.nii.gz")).dataobj)
        np.testing.assert_array_equal(two, one)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [f"case{i}.nii.gz" for i in range(3)]


def test_nproc_checks_the_recipe_before_launching(small_ct, tmp_path):
    recipe = tiny_recipe(small_ct)
    recipe["generator"]["type"] = "pix2pix_unte"
    result = _toolbox("run", str(write_recipe(tmp_path / "r.yaml", recipe)), "--nproc", "2")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pix2pix_unte" in lines[0] and "Traceback" not in result.stderr


def test_a_run_folder_error_is_reported_once(small_ct, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "something").write_text("x")
    result = _torchrun("run", str(write_recipe(tmp_path / "r.yaml", tiny_recipe(small_ct))), "--out", str(taken))
    assert result.returncode != 0
    assert result.stderr.count("the run folder exists and is not empty") == 1
    assert (taken / "something").read_text() == "x" and len(list(taken.iterdir())) == 1
