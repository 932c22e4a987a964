"""Inference speed options: sliding-window plans (--window), channels-last weights, --amp.

Checked on the shipped pretrained models and real held-out images: the faster paths give
the same image (channels-last) or nearly the same (larger windows, bfloat16), and every
window stays within the voxel budget whatever the image's size.
"""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch

import toolbox
from conftest import SAMPLES
from toolbox.cli import main
from toolbox.inference_window import WINDOW_VOXELS, parse_window, plan_windows
from toolbox.infer import check_options, denoise_units, denoise_with_model, load_trained_model
from toolbox.pretrained import model_file

CHEST = SAMPLES / "ct" / "test" / "chest_small.nii.gz"
MR_SLAB = SAMPLES / "mr3d" / "test" / "mni_t1_2mm_z52-80.nii.gz"


def _pretrained(name: str, **options):
    registry = toolbox.plugin_registry()
    return load_trained_model(model_file(registry, name), torch.device("cpu"), registry, **options)


def _noisy(path, sd, seed=1):
    clean = np.asarray(nib.load(str(path)).dataobj, np.float32)
    clean = clean[..., 0] if clean.ndim == 3 and clean.shape[-1] == 1 else clean
    noisy = clean + np.random.default_rng(seed).normal(0, sd, clean.shape).astype(np.float32)
    return clean[None], noisy[None]


def _psnr(image, clean):
    span = float(clean.max() - clean.min())
    return 10 * math.log10(span**2 / float(np.mean((image - clean) ** 2)))


def test_the_whole_image_is_one_window_within_the_budget():
    plan = plan_windows((96, 96), (512, 512), 0.25, None)
    assert plan.roi_size == (512, 512) and plan.overlap == (0.0, 0.0) and plan.batch == 4
    # Smaller than the patch: the patch (the image is padded), as before.
    assert plan_windows((96, 96), (40, 300), 0.25, None).roi_size == (96, 300)
    # The training patch, unchanged: what exports tile with.
    plan = plan_windows((32, 32, 32), (80, 96, 80), 0.25, "patch")
    assert plan.roi_size == (32, 32, 32) and plan.overlap == (0.25, 0.25, 0.25) and plan.batch == 4


@pytest.mark.parametrize("patch, shape", [((32, 32, 32), (300, 512, 512)), ((96, 96), (4096, 3000)),
                                          ((16, 32, 32), (31, 2000, 61))])
def test_a_large_image_gets_windows_within_the_budget_and_the_patch_overlap_in_voxels(patch, shape):
    plan = plan_windows(patch, shape, 0.25, None)
    assert math.prod(plan.roi_size) <= WINDOW_VOXELS and plan.batch == 1
    assert all(p <= r <= max(p, s) for p, r, s in zip(patch, plan.roi_size, shape))
    for p, r, s, fraction in zip(patch, plan.roi_size, shape, plan.overlap):
        assert fraction == (0.0 if r >= s else pytest.approx(0.25 * p / r))


def test_window_text():
    assert parse_window(None, 2) == "patch" and parse_window("patch", 3) == "patch"
    assert parse_window("auto", 2) is None
    assert parse_window("256", 2) == (256, 256) and parse_window("64x64x32", 3) == (64, 64, 32)
    for bad in ("banana", "0", "64x64x32", "-3", "64x"):
        with pytest.raises(ValueError, match="--window must be"):
            parse_window(bad, 2)


@pytest.mark.parametrize("name, path, sd", [("ct", CHEST, 50.0), ("mr3d", MR_SLAB, 10.0)])
def test_channels_last_weights_denoise_the_same_image(name, path, sd):
    _, noisy = _noisy(path, sd)
    plain = denoise_with_model(_pretrained(name, channels_last=False), noisy, 2, torch.device("cpu"))
    fast = denoise_with_model(_pretrained(name), noisy, 2, torch.device("cpu"))
    weight = next(_pretrained(name).generator.parameters())
    layout = torch.channels_last if weight.ndim == 4 else torch.channels_last_3d
    assert weight.ndim < 4 or weight.is_contiguous(memory_format=layout)
    assert np.abs(fast - plain).max() <= 1e-4 * np.abs(plain).max()


def test_larger_windows_and_bfloat16_stay_close_to_the_patch_windows():
    clean, noisy = _noisy(CHEST, 50.0)
    model = _pretrained("ct")
    patch = denoise_with_model(model, noisy, None, torch.device("cpu"))
    whole = denoise_with_model(check_options(model, window="auto"), noisy, None, torch.device("cpu"))
    sized = denoise_with_model(check_options(model, window="128"), noisy, None, torch.device("cpu"))
    half = denoise_with_model(check_options(model, amp=True), noisy, None, torch.device("cpu"))
    assert np.array_equal(whole, sized)  # a 128x128 slice: auto is one 128x128 window
    assert not np.array_equal(whole, patch)  # ... where the 96x96 patch needs four
    base = _psnr(patch, clean)
    assert base > _psnr(noisy, clean) + 5  # 32.4 -> 38.7 dB
    assert abs(_psnr(whole, clean) - base) < 0.1
    assert abs(_psnr(half, clean) - base) < 0.3 and not np.array_equal(half, patch)


def test_a_latent_generator_keeps_its_own_window_size():
    from test_latent_inversion import TinyLatentGenerator

    search = toolbox.LatentInversion(TinyLatentGenerator(), starts=2, steps=3, max_steps=3)
    noisy = np.random.default_rng(0).random((1, 20, 20)).astype(np.float32)
    results = [denoise_units(search, 2, [8, 8], {"type": "none"}, noisy, None, torch.device("cpu"), window=window)
               for window in ("patch", None, (20, 20))]
    assert all(np.array_equal(results[0], other) for other in results[1:])


def test_denoise_window_and_amp_options(tmp_path, capsys):
    _, noisy = _noisy(CHEST, 50.0)
    source = tmp_path / "noisy.nii.gz"
    nib.save(nib.Nifti1Image(noisy[0], np.eye(4)), str(source))
    out = tmp_path / "out.nii.gz"
    assert main(["denoise", "--model", "ct", str(source), "-o", str(out), "--window", "auto", "--amp"]) == 0
    assert nib.load(str(out)).shape == noisy.shape[1:]
    for bad in ("banana", "64x64x64"):
        target = tmp_path / f"bad_{bad}.nii.gz"
        capsys.readouterr()
        assert main(["denoise", "--model", "ct", str(source), "-o", str(target), "--window", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--window must be" in err and "Traceback" not in err
        assert not target.exists()
    report = tmp_path / "eval"
    assert main(["evaluate", "--model", "ct", str(CHEST), "-o", str(report), "--window", "128", "--amp"]) == 0
    assert (report / "report.json").is_file()
