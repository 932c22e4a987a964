"""Joint denoising and super-resolution (seed 002): networks, coherent pairs, the two-phase
scheme, and outputs whose geometry tiles the input's physical extent."""

from __future__ import annotations

import itk
import nibabel as nib
import numpy as np
import pytest
import torch

import toolbox
from conftest import SAMPLES, write_recipe
from dicom_series import ct_slices, write_ct_series
from toolbox.cli import main


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("scale", [1, 2, 4])
def test_rrdbnet_scales_odd_sizes(dims, scale):
    net = toolbox.build("generators", {"type": "rrdbnet", "features": 4, "growth": 2, "blocks": 1},
                        spatial_dims=dims, in_channels=1, out_channels=1, scale=scale)
    size = (7, 5, 3)[:dims]
    out = net(torch.rand(2, 1, *size))
    assert out.shape == (2, 1, *[s * scale for s in size])


def test_rrdbnet_residual_starts_near_the_interpolated_input():
    """MSRA x 0.1 and the residual output: an untrained network is close to the (bilinear)
    upsampled input, not to noise (the paper's point about small initialisation)."""
    torch.manual_seed(0)
    net = toolbox.build("generators", {"type": "rrdbnet", "features": 8, "growth": 4, "blocks": 2},
                        spatial_dims=2, in_channels=1, out_channels=1, scale=2)
    x = torch.rand(1, 1, 16, 16)
    upsampled = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert (net(x) - upsampled).abs().mean() < 0.5 * upsampled.abs().mean()


def test_vgg_discriminator_names_the_size_it_takes():
    net = toolbox.build("discriminators", {"type": "vgg_discriminator", "input_size": 64, "features": 4},
                        spatial_dims=2, in_channels=1)
    assert net(torch.rand(2, 1, 64, 64)).shape == (2, 1)
    with pytest.raises(ValueError, match="takes 64x64 images"):
        net(torch.rand(2, 1, 32, 32))


def test_unet_discriminator_takes_any_size_and_is_spectrally_normalised():
    net = toolbox.build("discriminators", {"type": "unet_sn_discriminator", "features": 4},
                        spatial_dims=3, in_channels=1)
    assert net(torch.rand(1, 1, 9, 12, 10)).shape == (1, 1, 9, 12, 10)
    assert sum("parametrizations" in name for name, _ in net.named_parameters()) >= 8


def test_gram_texture_ignores_where_and_sees_what():
    """The Gram loss is blind to moving the texture (a circular shift) but not to changing it."""
    loss = toolbox.build("losses", {"type": "gram_texture", "layers": {"relu1_2": 1.0}, "random_weights": True})
    torch.manual_seed(0)
    image = torch.rand(1, 1, 32, 32)
    shifted = torch.roll(image, shifts=(8, 8), dims=(2, 3))
    smooth = torch.nn.functional.avg_pool2d(image, 3, 1, 1)
    assert loss(shifted, image) < 0.1 * loss(smooth, image)


def test_sr_degradation_bins_blurs_and_tells_its_noise_free_image():
    noise = toolbox.build("noise_models", {"type": "sr_degradation", "scale": 2, "psf_sigma": 0.0,
                                           "noise": {"type": "gaussian", "sigma": 0.1}})
    clean = torch.arange(16.0).reshape(1, 4, 4)
    free = noise.noise_free(clean, torch.Generator().manual_seed(0))
    assert torch.allclose(free, torch.tensor([[[2.5, 4.5], [10.5, 12.5]]]))
    noisy = noise(clean, torch.Generator().manual_seed(0))
    assert noisy.shape == (1, 2, 2) and not torch.equal(noisy, free)
    with pytest.raises(ValueError, match="does not divide"):
        noise(torch.rand(1, 5, 4), torch.Generator().manual_seed(0))


def _coordinates(rows, cols, block=1):
    r, c = np.meshgrid(np.arange(rows) // block, np.arange(cols) // block, indexing="ij")
    return (r * 1000 + c).astype(np.float32)


def test_paired_crops_are_coherent_through_flips_and_turns(tmp_path):
    """Pixel values encode their coordinates: every high-resolution 2x2 block of a target
    holds the value of the input pixel at the same place, after identical flips/turns."""
    for split in ("train", "val"):
        for kind, image in (("noisy", _coordinates(40, 36)), ("clean", _coordinates(80, 72, block=2))):
            folder = tmp_path / f"{split}_{kind}"
            folder.mkdir()
            nib.save(nib.Nifti1Image(image, np.eye(4)), str(folder / "a.nii.gz"))
    recipe = toolbox.validate_recipe({
        "data": {"paired": {f"{s}_{k}": str(tmp_path / f"{s}_{k}") for s in ("train", "val") for k in ("noisy", "clean")},
                 "normalize": {"type": "none"}, "patch_size": [8, 8], "scale": 2},
        "generator": {"type": "rrdbnet", "blocks": 1, "features": 4, "growth": 2},
        "losses": {"pix": {"type": "l1"}}, "optimizers": {"generator": {"type": "adam"}},
        "scheme": {"type": "supervised"}, "train": {"steps": 1}}, "r.yaml")
    data = toolbox.build_data(recipe.data)
    orientations = set()
    for index in range(40):
        sample = data.train[index]
        source, target = sample["input"][0].numpy(), sample["target"][0].numpy()
        assert source.shape == (8, 8) and target.shape == (16, 16)
        for dy in (0, 1):
            for dx in (0, 1):
                assert np.array_equal(target[dy::2, dx::2], source)
        orientations.add((np.sign(source[0, 1] - source[0, 0]), np.sign(source[1, 0] - source[0, 0])))
    assert len(orientations) > 2  # the augmentation did flip and turn


def test_noise_model_that_does_not_downsample_is_a_clear_error(tmp_path):
    recipe = toolbox.validate_recipe({
        "data": {"train": str(SAMPLES / "fluorescence" / "train"), "val": str(SAMPLES / "fluorescence" / "test"),
                 "patch_size": [8, 8], "scale": 2, "noise": {"type": "gaussian", "sigma": 0.1}},
        "generator": {"type": "rrdbnet", "blocks": 1, "features": 4, "growth": 2},
        "losses": {"pix": {"type": "l1"}}, "optimizers": {"generator": {"type": "adam"}},
        "scheme": {"type": "supervised"}, "train": {"steps": 1}}, "r.yaml")
    with pytest.raises(toolbox.ToolboxError, match="must return 8x8"):
        toolbox.build_data(recipe.data).train[0]


def test_a_generator_that_cannot_upsample_is_a_recipe_error():
    with pytest.raises(toolbox.RecipeError, match="does not upsample"):
        toolbox.build_generator({"data": {"spatial_dims": 2, "channels": 1, "scale": 2, "patch_size": [8, 8]},
                                 "generator": {"type": "unet"}})


def _sr_recipe(tmp_path, steps=4, pretrain=2):
    return {
        "name": "sr", "seed": 1,
        "data": {"train": str(SAMPLES / "fluorescence" / "train"), "val": str(tmp_path / "val"),
                 "normalize": {"type": "percentile"}, "patch_size": [16, 16], "scale": 2,
                 "noise": {"type": "sr_degradation", "scale": 2, "psf_sigma": [0.5, 1.0]}},
        "generator": {"type": "rrdbnet", "features": 4, "growth": 2, "blocks": 1},
        "discriminator": {"type": "unet_sn_discriminator", "features": 4},
        "losses": {"pix": {"type": "l1"}, "percep": {"type": "vgg_perceptual", "layers": {"conv3_4": 1.0},
                                                     "weight": 0.1},
                   "adv": {"type": "gan", "mode": "ragan", "weight": 0.005}},
        "optimizers": {"generator": {"type": "adam", "lr": 1e-4, "betas": [0.9, 0.99], "amsgrad": True},
                       "discriminator": {"type": "adam", "lr": 1e-4, "betas": [0.9, 0.99], "amsgrad": True}},
        "scheme": {"type": "esrgan", "pretrain_steps": pretrain},
        "train": {"steps": steps, "batch_size": 2, "val_every": 2, "checkpoint_every": 1, "log_every": 1,
                  "ema": 0.9, "lr_schedule": {"type": "step", "every": 2, "factor": 0.5}},
    }


@pytest.fixture(scope="module")
def sr_val(tmp_path_factory):
    """A 2D NIfTI crop of the held-out fluorescence image (held out of training)."""
    root = tmp_path_factory.mktemp("sr")
    image = toolbox.read_volume(SAMPLES / "fluorescence" / "test" / "nuclei_right.tif").array[0, :64, :48]
    (root / "val").mkdir()
    affine = np.diag([0.5, 0.4, 1.0, 1.0])
    affine[:3, 3] = (3.0, -2.0, 7.0)
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(root / "val" / "cells.nii.gz"))
    return root


def _metrics(run):
    import json

    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_phases_switch_at_the_step_and_resume_exactly(sr_val, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", _sr_recipe(sr_val, steps=5, pretrain=2))
    assert main(["run", str(recipe), "--out", str(tmp_path / "straight")]) == 0
    train = [m for m in _metrics(tmp_path / "straight") if m.get("split") == "train"]
    assert [("l_d_real" in m, "l_g_adv" in m) for m in train] == [(False, False)] * 2 + [(True, True)] * 3
    # Stop in the adversarial phase at step 3, then resume to step 5.
    assert main(["run", str(recipe), "train.steps=3", "--out", str(tmp_path / "split")]) == 0
    assert main(["run", "--resume", str(tmp_path / "split"), "train.steps=5"]) == 0
    straight = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)["scheme"]
    resumed = torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=True)["scheme"]
    for net in ("generator", "discriminator"):
        for key, value in straight["modules"][net].items():
            assert torch.equal(value, resumed["modules"][net][key]), f"{net}.{key}"


@pytest.fixture(scope="module")
def sr_model(sr_val, tmp_path_factory, vgg_weights):
    root = tmp_path_factory.mktemp("sr_model")
    recipe = write_recipe(root / "r.yaml", _sr_recipe(sr_val, steps=2, pretrain=1))
    with pytest.MonkeyPatch.context() as patch:  # module scope: before the per-test variable is set
        patch.setenv("TOOLBOX_VGG19_WEIGHTS", str(vgg_weights))
        assert main(["run", str(recipe), "--out", str(root / "run")]) == 0
    return root / "run"


def test_a_run_reports_against_the_interpolated_input(sr_model, sr_val):
    import json

    report = json.loads((sr_model / "eval.json").read_text())
    row = report["images"][0]
    assert "interpolated" in report["reference"]["note"]
    # The outputs: the low-resolution input on a coarser grid, the output on the clean one.
    noisy = nib.load(str(sr_model / "held_out" / "noisy_cells.nii.gz"))
    denoised = nib.load(str(sr_model / "held_out" / "denoised_cells.nii.gz"))
    clean = nib.load(str(sr_val / "val" / "cells.nii.gz"))
    assert noisy.shape[:2] == (32, 24) and denoised.shape[:2] == (64, 48)
    assert np.allclose(denoised.affine, clean.affine, atol=1e-5)
    assert np.isfinite(row["psnr"]) and np.isfinite(row["psnr_noisy"])


def _corners(affine, shape):
    """Physical positions of the outer corners of the voxel grid (voxel edges, not centres)."""
    lows = affine @ np.array([-0.5, -0.5, -0.5, 1.0])
    highs = affine @ np.array([s - 0.5 for s in shape] + [1.0])
    return lows[:3], highs[:3]


def test_denoise_writes_a_2x_nifti_over_the_same_extent(sr_model, tmp_path):
    affine = np.array([[0.0, -0.8, 0.0, 10.0], [0.9, 0.0, 0.0, -5.0], [0.0, 0.0, 2.5, 3.0], [0, 0, 0, 1.0]])
    image = toolbox.read_volume(SAMPLES / "fluorescence" / "test" / "nuclei_right.tif").array[0, 100:130, 10:50]
    nib.save(nib.Nifti1Image(image[:, :, None], affine), str(tmp_path / "in.nii.gz"))
    assert main(["denoise", str(sr_model), str(tmp_path / "in.nii.gz"), "-o", str(tmp_path / "out.nii.gz")]) == 0
    out = nib.load(str(tmp_path / "out.nii.gz"))
    assert out.shape == (60, 80, 1)
    assert np.allclose(out.header.get_zooms(), (0.45, 0.4, 2.5))
    for before, after in zip(_corners(affine, (30, 40, 1)), _corners(out.affine, out.shape)):
        assert np.allclose(before, after, atol=1e-4)


def test_denoise_writes_a_2x_dicom_series_itk_reads_over_the_same_extent(sr_model, tmp_path):
    write_ct_series(tmp_path / "series", ct_slices(3, size=40))
    assert main(["denoise", str(sr_model), str(tmp_path / "series"), "-o", str(tmp_path / "out")]) == 0
    names = itk.GDCMSeriesFileNames.New()
    names.SetDirectory(str(tmp_path / "series"))
    before = itk.imread([str(p) for p in names.GetInputFileNames()], itk.F)
    names.SetDirectory(str(tmp_path / "out"))
    after = itk.imread([str(p) for p in names.GetInputFileNames()], itk.F)
    assert tuple(after.GetLargestPossibleRegion().GetSize()) == (80, 80, 3)
    assert np.allclose(np.array(after.GetSpacing())[:2], np.array(before.GetSpacing())[:2] / 2, atol=1e-4)

    def extent(image):
        size = np.array(image.GetLargestPossibleRegion().GetSize(), float)
        direction, spacing = itk.array_from_matrix(image.GetDirection()), np.array(image.GetSpacing())
        origin = np.array(image.GetOrigin())
        return [origin + direction @ ((corner - 0.5) * spacing) for corner in (np.zeros(3), size)]

    for a, b in zip(extent(before), extent(after)):
        assert np.allclose(a[:2], b[:2], atol=1e-3)  # in-plane corners (slices are not scaled by a 2D model)


def test_a_3d_series_gains_slices_at_the_right_positions(tmp_path):
    write_ct_series(tmp_path / "series", ct_slices(4, size=16), spacing=2.5)
    volume = toolbox.read_volume(tmp_path / "series")
    units = np.zeros((1, 8, 32, 32), np.float32)
    toolbox.write_volume(volume, units, tmp_path / "out")
    out = toolbox.read_volume(tmp_path / "out")
    assert out.array.shape == (1, 8, 32, 32)
    assert out.spacing == pytest.approx((1.25, 0.35, 0.35), abs=1e-4)
    first_in = np.array(volume.meta["headers"][0].ImagePositionPatient, float)
    first_out = np.array(out.meta["headers"][0].ImagePositionPatient, float)
    row, col = (np.array(volume.meta["headers"][0].ImageOrientationPatient[i:i + 3], float) for i in (0, 3))
    normal = np.cross(row, col)
    # A quarter of the old spacing back along every axis (slices, rows, columns).
    assert np.allclose(first_out, first_in - 0.25 * (2.5 * normal + 0.7 * row + 0.7 * col), atol=1e-3)


def test_tiff_resolution_follows_the_scale(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "a.tif", np.zeros((6, 5), np.uint16), resolution=(2.0, 4.0), resolutionunit=3)
    volume = toolbox.read_volume(tmp_path / "a.tif")
    toolbox.write_volume(volume, np.zeros((1, 12, 10), np.float32), tmp_path / "b.tif")
    with tifffile.TiffFile(tmp_path / "b.tif") as tif:
        page = tif.pages[0]
        assert page.shape == (12, 10)
        x, y = (page.tags[t].value for t in ("XResolution", "YResolution"))
        assert x[0] / x[1] == pytest.approx(4.0) and y[0] / y[1] == pytest.approx(8.0)
        assert int(page.tags["ResolutionUnit"].value) == 3


def test_itk_origin_moves_a_quarter_voxel(tmp_path):
    image = itk.image_from_array(np.zeros((3, 4, 5), np.float32))
    image.SetSpacing((1.0, 2.0, 3.0))
    image.SetOrigin((10.0, 20.0, 30.0))
    itk.imwrite(image, str(tmp_path / "a.nrrd"))
    volume = toolbox.read_volume(tmp_path / "a.nrrd")
    toolbox.write_volume(volume, np.zeros((1, 6, 8, 10), np.float32), tmp_path / "b.nrrd")
    out = itk.imread(str(tmp_path / "b.nrrd"))
    assert tuple(out.GetSpacing()) == pytest.approx((0.5, 1.0, 1.5))
    assert tuple(out.GetOrigin()) == pytest.approx((9.75, 19.5, 29.25))


def test_evaluate_compares_with_interpolation_and_baselines_then_interpolation(sr_model, sr_val, tmp_path):
    report = toolbox.evaluate(sr_model, [sr_val / "val"], out_dir=tmp_path / "ev")
    methods = {row["method"] for row in report["rows"]}
    assert {"cubic x2 (noisy)", "non-local means + cubic x2"} <= methods
    assert all(row["sigma_known"] for row in report["rows"])  # the degradation says what its noise was
    model_row = next(r for r in report["rows"] if r["method"].startswith("model"))
    assert np.isfinite(model_row["psnr"]) and (tmp_path / "ev" / "figures" / "cells.png").is_file()


def test_a_low_resolution_copy_of_a_series_sits_at_the_centres_of_slice_pairs(tmp_path):
    """The held-out noisy input of a 3D super-resolution run is written on the coarser grid."""
    write_ct_series(tmp_path / "series", ct_slices(4, size=16), spacing=2.5)
    volume = toolbox.read_volume(tmp_path / "series")
    toolbox.write_volume(volume, np.zeros((1, 2, 8, 8), np.float32), tmp_path / "out")
    out = toolbox.read_volume(tmp_path / "out")
    assert out.array.shape == (1, 2, 8, 8) and out.spacing == pytest.approx((5.0, 1.4, 1.4), abs=1e-4)
    first_two = [np.array(h.ImagePositionPatient, float) for h in volume.meta["headers"][:2]]
    row, col = (np.array(volume.meta["headers"][0].ImageOrientationPatient[i:i + 3], float) for i in (0, 3))
    expected = (first_two[0] + first_two[1]) / 2 + 0.5 * 0.7 * (row + col)
    assert np.allclose(np.array(out.meta["headers"][0].ImagePositionPatient, float), expected, atol=1e-3)
