"""Test-time adaptation (``--adapt``): channel gains tuned on the noisy image with SURE.

Checked on the shipped ``ct`` model and a real held-out slice: the tuning raises the PSNR,
SURE predicts the gain it measured, the network is the same after it as before, a tuning
that does not help is dropped, and models whose noise SURE does not describe are refused.
"""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch

import toolbox
from conftest import SAMPLES
from toolbox.adaptation import (Adaptation, ChannelGains, WindowSampler, adapt_gains, check_adaptable, half_mask,
                                noise_correlation, split_axis, sure)
from toolbox.cli import main
from toolbox.infer import check_options, denoise_with_model, load_trained_model
from toolbox.pretrained import model_file

CHEST = SAMPLES / "ct" / "test" / "chest_small.nii.gz"


def _pretrained(name: str):
    registry = toolbox.plugin_registry()
    return load_trained_model(model_file(registry, name), torch.device("cpu"), registry)


def _chest_pair(sd_hu: float, seed: int = 3):
    clean = np.asarray(nib.load(str(CHEST)).dataobj, np.float32)[..., 0][None]
    noisy = clean + np.random.default_rng(seed).normal(0, sd_hu, clean.shape).astype(np.float32)
    return clean, noisy


def _spine_pair(sd_hu: float, seed: int = 3):
    """The held-out 512x512 spine slice, clean and with white noise (its own scanner noise,
    correlated, is weak against 25 HU over the whole slice: the adaptation's gate passes)."""
    clean = np.asarray(nib.load(str(SAMPLES / "ct" / "test" / "spine.nii.gz")).dataobj, np.float32)[..., 0][None]
    noisy = clean + np.random.default_rng(seed).normal(0, sd_hu, clean.shape).astype(np.float32)
    return clean, noisy


def _psnr(image, clean, span=2000.0):
    return 10 * math.log10(span**2 / float(np.mean((image.astype(np.float64) - clean) ** 2)))


def _plain_and_adapted(model, noisy, steps: int):
    """The model's output on ``noisy`` as it is and adapted over ``steps``, and what the
    adaptation reported."""
    plain = denoise_with_model(model, noisy, None, torch.device("cpu"))
    done = []
    adapted = denoise_with_model(check_options(model, adapt=steps), noisy, None, torch.device("cpu"),
                                 on_adapted=done.append)
    return plain, adapted, done[0]


def _blur_net(channels: int = 1) -> torch.nn.Module:
    net = torch.nn.Conv2d(channels, channels, 5, padding=2, bias=False, padding_mode="reflect")
    with torch.no_grad():
        net.weight.zero_()
        for c in range(channels):
            net.weight[c, c] = 1.0 / 25
    return net


def test_sure_estimates_the_true_error_of_a_denoiser_it_never_sees_the_clean_image_of():
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, 256, dtype=np.float32)
    clean = torch.from_numpy(np.add.outer(ramp, np.sin(8 * ramp))[None, None])
    sigma = 0.1
    noisy = clean + sigma * torch.from_numpy(rng.standard_normal(clean.shape).astype(np.float32))
    net = _blur_net()
    with torch.no_grad():
        true_mse = float(((net(noisy) - clean) ** 2).mean())
        estimates = [float(sure(net, noisy, sigma, torch.randn(clean.shape), [0])) for _ in range(4)]
    # The blur's error is a fraction of the noisy image's own (sigma^2 = 0.01): SURE, given only
    # the noisy image, tells them apart.
    assert np.mean(estimates) == pytest.approx(true_mse, rel=0.1)
    assert true_mse < sigma**2 / 3


def test_gains_of_one_change_nothing_and_leave_no_trace():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3, padding=1))
    x = torch.randn(1, 1, 16, 16)
    before = net(x).detach()
    with ChannelGains(net) as gains:
        assert [g.numel() for g in gains.gains] == [4, 1]
        assert torch.equal(net(x), before)
        with torch.no_grad():
            gains.gains[1].fill_(2.0)
        assert torch.allclose(net(x), 2 * before)
    assert torch.equal(net(x).detach(), before)


def test_a_2d_model_on_a_volume_is_tuned_on_slices_and_a_2_5d_model_on_its_middle_slice():
    volume = np.random.default_rng(0).random((1, 6, 200, 150)).astype(np.float32)
    sampler = WindowSampler(volume, 2, slice_axis=0, context=3, half=0)
    assert sampler().shape == (1, 3, 100, 128) and sampler.target == [1]  # halves of the 200 axis
    flat = WindowSampler(volume[:, 0], 2, slice_axis=None, context=1, half=1)
    assert flat().shape == (1, 1, 100, 128) and flat.target == [0]


@pytest.mark.parametrize("shape, model_dims, slice_axis, axis", [((300, 200), 2, None, 0), ((6, 200, 250), 2, 0, 2),
                                                                ((80, 96, 28), 3, None, 1)])
def test_windows_of_a_half_never_reach_into_the_other(shape, model_dims, slice_axis, axis):
    # Each voxel holds its own position along the split axis, so a window shows where it came from.
    position = np.broadcast_to(np.arange(shape[axis]).reshape([-1 if a == axis else 1 for a in range(len(shape))]),
                               shape)[None].astype(np.float32)
    assert split_axis(shape, model_dims, slice_axis) == axis
    middle = shape[axis] // 2
    for half in (0, 1):
        sampler = WindowSampler(position, model_dims, slice_axis, 1, half, seed=half)
        windows = [sampler() for _ in range(5)] + sampler.tiles(8)
        for window in windows:
            assert (window < middle).all() if half == 0 else (window >= middle).all()
        mask = half_mask(shape, axis, half)
        assert np.array_equal(np.broadcast_to(mask, position.shape), (position < middle) == (half == 0))
    tiles = WindowSampler(position, model_dims, slice_axis, 1, 0).tiles(100)
    assert len(tiles) >= 1 and all(t.shape == tiles[0].shape for t in tiles)


def test_adapting_ct_to_a_held_out_slice_gains_what_sure_predicts_and_leaves_the_model_as_it_was():
    model = _pretrained("ct")
    clean, noisy = _spine_pair(25.0)
    plain, adapted, done = _plain_and_adapted(model, noisy, 100)
    gain = _psnr(adapted, clean) - _psnr(plain, clean)
    assert done.kept == 2 and done.steps == 100
    assert gain > 0.4, gain
    # SURE's estimate (on its check windows) is the gain measured against the clean slice.
    assert done.estimated_db == pytest.approx(gain, abs=0.3)
    again = denoise_with_model(model, noisy, None, torch.device("cpu"))
    assert np.array_equal(again, plain)  # the gains were removed, the weights never moved
    assert all(p.requires_grad for p in model.generator.parameters())


def test_a_tuning_that_does_not_help_is_dropped():
    net = _blur_net()
    image = np.random.default_rng(1).random((1, 64, 64)).astype(np.float32)
    x = torch.from_numpy(image)[None]
    before = net(x).detach()
    tune, check = WindowSampler(image, 2, None, 1, 0), WindowSampler(image, 2, None, 1, 1)
    with ChannelGains(net) as gains:
        # A step this large overshoots: SURE on the other half rises, so the gains go back to 1.
        done = adapt_gains(net, gains, tune, check, 0.05, 5, torch.device("cpu"), learning_rate=50.0)
        assert isinstance(done, Adaptation) and done.kept == 0 and done.risk_after > done.risk_before
        assert all(torch.equal(g, torch.ones_like(g)) for g in gains.gains)
        assert torch.equal(net(x), before)


def test_adapting_is_left_alone_where_sure_cannot_tell_it_helps():
    # 600 HU on the small chest slice: SURE's own error is larger than any gain there.
    model = _pretrained("ct")
    _, noisy = _chest_pair(600.0)
    plain, adapted, done = _plain_and_adapted(model, noisy, 60)
    assert done.kept == 0 and not done.declined and np.array_equal(adapted, plain)


def test_noise_correlation_tells_white_noise_from_smoothed_noise():
    from scipy.ndimage import uniform_filter

    white = np.random.default_rng(0).standard_normal((1, 200, 200))
    assert noise_correlation(white, 2, None) < 0.03
    assert noise_correlation(uniform_filter(white, (0, 3, 3)), 2, None) > 0.5
    # A 2D model on a volume: only the in-plane axes count (slices may be correlated through z).
    stack = np.repeat(white[:, None, :50, :50], 4, axis=1)
    assert noise_correlation(stack, 2, 0) < 0.05 and noise_correlation(stack, 3, None) > 0.9


def test_an_image_whose_noise_is_not_white_is_left_alone():
    # Low-dose CT noise (filtered back-projection): correlated, where SURE would mislead.
    model = _pretrained("ct")
    clean, _ = _chest_pair(0.0)
    noise = toolbox.build("noise_models", {"type": "low_dose_ct", "I0": 1.0e5, "pixel_mm": 0.7})
    noisy = noise(torch.from_numpy(clean), torch.Generator().manual_seed(0)).numpy()
    plain, adapted, done = _plain_and_adapted(model, noisy, 50)
    assert "does not look white" in done.describe() and done.kept == 0
    assert np.array_equal(adapted, plain)


def test_models_whose_noise_sure_does_not_describe_are_refused(tmp_path, capsys):
    xray = _pretrained("xray")
    assert "poisson_gaussian" in check_adaptable(xray.generator, xray.recipe)
    assert check_adaptable(_pretrained("mr3d").generator, _pretrained("mr3d").recipe) is None
    clean, noisy = _chest_pair(25.0)
    source = tmp_path / "noisy.nii.gz"
    nib.save(nib.Nifti1Image(noisy[0], np.eye(4)), str(source))
    for options in (["--model", "xray", str(source), "--adapt", "10"], ["--model", "ct", str(source), "--adapt", "-3"]):
        target = tmp_path / "out.nii.gz"
        capsys.readouterr()
        assert main(["denoise", *options, "-o", str(target)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "adapt" in err and "Traceback" not in err
        assert not target.exists()


def test_denoise_and_evaluate_adapt(tmp_path, capsys):
    clean, noisy = _chest_pair(50.0)
    source = tmp_path / "noisy.nii.gz"
    nib.save(nib.Nifti1Image(noisy[0], np.eye(4)), str(source))
    out = tmp_path / "out.nii.gz"
    capsys.readouterr()
    assert main(["denoise", "--model", "ct", str(source), "-o", str(out), "--adapt", "20"]) == 0
    assert "adapted over 20 steps per half" in capsys.readouterr().out
    assert nib.load(str(out)).shape == noisy.shape[1:]
    report = tmp_path / "eval"
    assert main(["evaluate", "--model", "ct", str(CHEST), "-o", str(report), "--adapt", "20",
                 "--noise", "{type: gaussian, sigma: 0.025}"]) == 0
    printed = capsys.readouterr().out
    assert "chest_small.nii.gz, model adapted 20" in printed  # its verdict, in one line
    assert "SURE estimates" in printed or "not adapted:" in printed
    rows = toolbox_report_rows(report)
    adapted = [r for r in rows if r["method"].startswith("model adapted 20")]
    assert len(adapted) == 1 and adapted[0]["adaptation_kept"] in (0, 1, 2)
    assert "adaptation_estimated_db" in (report / "report.csv").read_text().splitlines()[0]


def toolbox_report_rows(folder):
    import json

    return json.loads((folder / "report.json").read_text())["rows"]


def test_a_2d_model_adapts_once_to_a_whole_volume():
    # Three noisy copies of the chest slice as a volume along its first axis: one tuning,
    # every slice denoised with it, and the halves split in-plane (never across slices).
    model = _pretrained("ct")
    _, noisy = _chest_pair(50.0)
    volume = np.stack([noisy[0] + np.random.default_rng(k).normal(0, 10.0, noisy[0].shape).astype(np.float32)
                       for k in range(3)])[None]
    done = []
    out = denoise_with_model(check_options(model, adapt=10), volume, 0, torch.device("cpu"), on_adapted=done.append)
    assert out.shape == volume.shape and len(done) == 1
    assert split_axis(volume.shape[1:], 2, 0) in (1, 2)


def test_an_image_too_small_to_halve_is_denoised_as_it_is():
    model = _pretrained("ct")
    noisy = (np.random.default_rng(0).normal(0, 50, (1, 12, 10)) - 500).astype(np.float32)
    plain, adapted, done = _plain_and_adapted(model, noisy, 5)
    assert "too small" in done.describe() and np.array_equal(adapted, plain)


def test_one_progress_count_runs_over_every_pass_and_tuning_step():
    # The bar a user watches: it counts the plain pass, each half's tuning steps and its
    # tuned pass as one total (3 passes of W windows + 2 x steps), never restarting.
    model = _pretrained("ct")
    _, noisy = _chest_pair(50.0)
    seen = []
    denoise_with_model(check_options(model, adapt=10), noisy, None, torch.device("cpu"),
                       progress=lambda done, total: seen.append((done, total)))
    totals = {total for _, total in seen}
    counts = [done for done, _ in seen]
    assert len(totals) == 1 and counts == sorted(counts) and seen[-1][0] == seen[-1][1]
    total = totals.pop()
    plain = []  # the windows of one pass, as the plain (unadapted) denoising counts them
    denoise_with_model(model, noisy, None, torch.device("cpu"), progress=lambda done, of: plain.append(of))
    windows = plain[-1]
    assert windows >= 1 and total == 3 * windows + 20
    # each half's 10 tuning steps were shown, one by one, after the plain pass
    for half in (0, 1):
        start = windows + half * (10 + windows)
        assert all(start + step in counts for step in range(1, 11))


def test_a_declined_adaptation_still_ends_its_progress():
    model = _pretrained("ct")
    noisy = (np.random.default_rng(0).normal(0, 50, (1, 12, 10)) - 500).astype(np.float32)
    seen = []
    denoise_with_model(check_options(model, adapt=5), noisy, None, torch.device("cpu"),
                       progress=lambda done, total: seen.append((done, total)))
    assert seen[-1][0] == seen[-1][1] and [d for d, _ in seen] == sorted(d for d, _ in seen)
