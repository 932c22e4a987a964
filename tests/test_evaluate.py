"""`toolbox evaluate`: the model against classical baselines, with a table, files and figures."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLES, tiny_recipe, write_recipe
from toolbox.cli import main


def test_evaluate_on_the_bundled_ct_samples(tmp_path, small_ct, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(small_ct))
    assert main(["run", str(recipe), "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    out = tmp_path / "eval"
    assert main(["evaluate", str(tmp_path / "run"), str(SAMPLES / "ct" / "test"), "-o", str(out),
                 "--noise", "{type: gaussian, sigma: 0.08}"]) == 0
    printed = capsys.readouterr().out
    assert "data range 2000 (window -1000..1000)" in " ".join(printed.split())
    for method in ("model (tiny step", "identity (noisy)", "gaussian filter", "total variation", "non-local means"):
        assert method in printed
    report = json.loads((out / "report.json").read_text())
    assert {r["image"] for r in report["rows"]} == {"chest_small.nii.gz", "spine.nii.gz"}
    # Noise of 0.08 of the window is 160 HU; scores are in HU over the whole image with a
    # 2000 HU range, so doing nothing scores 20 log10(2000 / 160) = 21.9 dB.
    assert all(r["sigma_known"] and abs(r["sigma"] - 160) < 1e-3 and r["data_range"] == 2000
               for r in report["rows"])
    means = report["mean"]
    assert abs(means["identity (noisy)"]["psnr"] - 21.94) < 0.2
    # Classical baselines must beat doing nothing at this noise level.
    assert means["non-local means"]["psnr"] > means["identity (noisy)"]["psnr"] + 3
    assert (out / "report.csv").read_text().startswith("image,method,psnr,ssim")
    for figure in report["figures"]:
        with Image.open(figure) as image:
            assert image.size[0] > image.size[1] > 100
    # Texture next to fidelity: the noisy input has far more high-frequency power than the
    # clean image, a smoothing filter less; the spectra are plotted per image.
    assert means["identity (noisy)"]["hf_power"] > 10 * means["gaussian filter"]["hf_power"] > 10
    assert "HF power" in printed and sorted(p.name for p in (out / "spectra").iterdir()) == [
        "chest_small.png", "spine.png"]


def test_the_high_frequency_ratio_is_one_for_the_clean_image_and_falls_with_blur():
    from scipy.ndimage import gaussian_filter

    from toolbox.texture import high_frequency_ratio

    clean = np.asarray(nib.load(str(SAMPLES / "ct" / "test" / "spine.nii.gz")).dataobj, dtype=np.float64)
    clean = clean[..., 0][None]
    noisy = clean + np.random.default_rng(0).normal(0, 25, clean.shape)
    assert high_frequency_ratio(clean, clean) == 1.0
    ratios = [high_frequency_ratio(gaussian_filter(noisy, (0, s, s)), clean) for s in (0.0, 0.5, 1.0, 2.0)]
    assert ratios[0] > 100 and all(a > b for a, b in zip(ratios, ratios[1:]))
    # A 3D volume is measured over its planes, and equals the 2D measure on one plane.
    volume = np.repeat(clean[..., None], 3, axis=-1)
    assert high_frequency_ratio(volume * 0.5, volume) == high_frequency_ratio(clean * 0.5, clean)


def test_evaluate_on_paired_files(tmp_path, small_ct, capsys):
    recipe = tiny_recipe(small_ct)
    recipe["data"]["normalize"] = {"type": "percentile"}
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe)), "--out", str(tmp_path / "run")]) == 0
    clean_dir, noisy_dir = tmp_path / "clean", tmp_path / "noisy"
    clean_dir.mkdir(), noisy_dir.mkdir()
    image = np.asarray(nib.load(str(SAMPLES / "ct" / "test" / "chest_small.nii.gz")).dataobj).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(clean_dir / "chest.nii.gz"))
    noisy = image + np.random.default_rng(0).normal(0, 60, image.shape).astype(np.float32)
    nib.save(nib.Nifti1Image(noisy, np.eye(4)), str(noisy_dir / "chest.nii.gz"))
    out = tmp_path / "eval"
    assert main(["evaluate", str(tmp_path / "run"), str(clean_dir), "--noisy", str(noisy_dir), "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["noise"] == "paired files"
    assert not report["rows"][0]["sigma_known"] and report["rows"][0]["sigma"] > 0


def test_sweep_writes_a_row_per_level_and_method_and_a_plot(tmp_path, percentile_model, capsys):
    out = tmp_path / "sweep"
    levels = [0.02, 0.1, 0.3]
    assert main(["evaluate", str(percentile_model), str(SAMPLES / "ct" / "test" / "chest_small.nii.gz"),
                 "--sweep", "data.noise.sigma=[0.02, 0.1, 0.3]", "--ensemble", "2", "-o", str(out)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "baselines given the true noise level" in printed
    report = json.loads((out / "sweep.json").read_text())
    methods = {r["method"] for r in report["rows"]}
    assert len(report["rows"]) == len(levels) * len(methods) and {r["level"] for r in report["rows"]} == set(levels)
    # The plain model and its self-ensemble are different rows with different results.
    plain, ensembled = (next(m for m in methods if m.startswith(prefix)) for prefix in ("model (", "model x2"))
    assert any(report["mean"][plain][str(v)]["psnr"] != report["mean"][ensembled][str(v)]["psnr"] for v in levels)
    noisy = [report["mean"]["identity (noisy)"][str(v)]["psnr"] for v in levels]
    assert noisy[0] > noisy[1] > noisy[2]  # more noise, lower PSNR
    assert (out / "sweep.csv").read_text().startswith("level,image,method")
    with Image.open(out / "sweep.png") as plot:
        assert plot.size == (760, 460)
    assert main(["evaluate", str(percentile_model), str(SAMPLES / "ct" / "test"), "--sweep", "train.steps=[1]",
                 "-o", str(tmp_path / "bad")]) == 2


def test_the_anscombe_baseline_inverts_the_transform_without_bias():
    """What the Anscombe + BM3D baseline relies on: with a denoiser that returns the mean of the
    stabilised values (a perfect one, on a flat image), the inverse gives the true level back,
    even at a few photons where the plain algebraic inverse is biased."""
    from toolbox.baselines import anscombe_bm3d_or_bm4d

    rng = np.random.default_rng(0)
    for photons, read in ((2.0, 0.0), (5.0, 0.0), (20.0, 0.0), (10.0, 0.1)):
        peak, level = 100.0, photons / 100.0
        counts = rng.poisson(photons, size=(1, 256, 256)) + rng.normal(0, read * peak, size=(1, 256, 256))
        mean_of = lambda stabilised, sigma: np.full_like(stabilised, stabilised.mean())  # noqa: E731
        recovered = anscombe_bm3d_or_bm4d(counts / peak, peak, read, denoise=mean_of)
        assert abs(float(recovered.mean()) - level) < 0.03 * level, (photons, read, float(recovered.mean()))


def test_the_rician_inverse_removes_the_bias_of_the_magnitude_mean():
    """What BM3D / BM4D + Rician inverse relies on: the mean of Rician magnitudes (what a
    perfect smoother returns on a flat region) maps back to the amplitude, from no signal
    (where the plain mean sits at 1.25 sigma) to far above the noise."""
    from toolbox.baselines import rician_amplitude, rician_bm3d_or_bm4d, rician_mean

    assert rician_mean(np.array([0.0]))[0] == pytest.approx(np.sqrt(np.pi / 2))
    assert rician_mean(np.array([60.0]))[0] == pytest.approx(60.0 + 1 / 120, rel=1e-6)  # A + sigma^2 / 2A
    amplitudes = np.array([0.0, 0.5, 1.0, 2.0, 5.0, 39.0, 41.0, 200.0])
    np.testing.assert_allclose(rician_amplitude(rician_mean(amplitudes)), amplitudes, atol=2e-3, rtol=1e-4)
    rng = np.random.default_rng(0)
    sigma = 0.05
    for level in (0.0, 0.02, 0.05, 0.2, 1.0):
        magnitude = np.hypot(level + rng.normal(0, sigma, (1, 256, 256)), rng.normal(0, sigma, (1, 256, 256)))
        mean_of = lambda image, sd: np.full_like(image, image.mean())  # noqa: E731
        recovered = float(rician_bm3d_or_bm4d(magnitude, sigma, denoise=mean_of).mean())
        # Near no signal the inverse is steep (E[M] is flat in A there): a 0.2 % error in the
        # mean is 0.1 sigma in A.  The plain mean is off by 1.25 sigma at level 0.
        assert abs(recovered - level) < 0.1 * sigma + 0.01 * level, (level, recovered, float(magnitude.mean()))


def test_rician_noise_of_one_level_is_known_to_the_baselines(tmp_path, small_ct):
    from toolbox.evaluation import _true_sigma

    assert _true_sigma({"type": "rician", "sigma": 0.05}) == 0.05
    assert _true_sigma({"type": "rician", "sigma": [0.01, 0.1]}) is None
    assert _true_sigma({"type": "poisson", "peak": 10}) is None
    # Through evaluate: the baselines are given the true SD (window normaliser: 2000 HU per unit).
    recipe = tiny_recipe(small_ct)
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe)), "--out", str(tmp_path / "run")]) == 0
    assert main(["evaluate", str(tmp_path / "run"), str(small_ct / "val"), "--noise", "{type: rician, sigma: 0.05}",
                 "-o", str(tmp_path / "eval")]) == 0
    rows = json.loads((tmp_path / "eval" / "report.json").read_text())["rows"]
    assert all(row["sigma_known"] and row["sigma"] == pytest.approx(100.0) for row in rows)


def test_photon_noise_models_state_their_photon_count_only_when_fixed():
    import toolbox

    assert toolbox.build("noise_models", {"type": "poisson_gaussian", "peak": 50, "sigma": 0.01}).photons() == (50.0, 0.01)
    assert toolbox.build("noise_models", {"type": "poisson", "peak": 20}).photons() == (20.0, 0.0)
    assert toolbox.build("noise_models", {"type": "poisson_gaussian", "peak": [5, 50], "sigma": 0.01}).photons() is None
