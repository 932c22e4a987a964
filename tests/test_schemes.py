"""Training schemes: what each network sees, how often each steps, what is logged."""

from __future__ import annotations

import pytest
import torch

import toolbox
from conftest import RecordingPlugin, tiny_recipe
from toolbox import Parts
from toolbox import validate_recipe as validate


def _scheme(small_ct, **scheme):
    recipe = tiny_recipe(small_ct)
    recipe["discriminator"] = {"type": "recording"}
    recipe["scheme"] = {"type": "paired_gan", **scheme}
    checked = validate(recipe, "test")
    parts = Parts(checked.data, "test", torch.device("cpu"), toolbox.plugin_registry())
    return toolbox.build("schemes", checked["scheme"], parts=parts)


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(2, 1, 32, 32, generator=g)
    return {"input": target + 0.1 * torch.randn(2, 1, 32, 32, generator=g), "target": target}


def test_paired_gan_shows_d_input_target_pairs_and_input_output_pairs(small_ct, plugin_for_one_test):
    plugin_for_one_test(RecordingPlugin())
    scheme = _scheme(small_ct)
    d = scheme.discriminator
    batch = _batch(0)
    terms = {k: float(v) for k, v in scheme.train_step([batch], 1).items()}  # tensors until logged
    real, fake, for_g = d.seen
    assert real.shape[1] == 2  # conditional: (input, image) concatenated
    assert torch.equal(real[:, :1], batch["input"]) and torch.equal(real[:, 1:], batch["target"])
    assert torch.equal(fake[:, :1], batch["input"]) and not torch.equal(fake[:, 1:], batch["target"])
    assert torch.equal(for_g[:, :1], batch["input"])
    assert set(terms) == {"l_g_adv", "l_g_pix", "l_g_total", "l_d_real", "l_d_fake"}
    assert terms["l_g_total"] == __import__("pytest").approx(terms["l_g_adv"] + terms["l_g_pix"], rel=1e-5)


def test_paired_gan_discriminator_steps_per_generator_step(small_ct, plugin_for_one_test):
    plugin_for_one_test(RecordingPlugin())
    scheme = _scheme(small_ct, d_steps=3)
    assert scheme.batches_per_step == 3
    g_before = [p.clone() for p in scheme.generator.parameters()]
    batches = [_batch(i) for i in range(3)]
    scheme.train_step(batches, 1)
    d = scheme.discriminator
    # 3 D steps x (real + fake) + 1 look for the generator.
    assert len(d.seen) == 7
    for i in range(3):  # each D step on its own batch
        assert torch.equal(d.seen[2 * i][:, 1:], batches[i]["target"])
    assert any(not torch.equal(a, b) for a, b in zip(g_before, scheme.generator.parameters()))


def test_generator_step_does_not_update_discriminator(small_ct, plugin_for_one_test):
    plugin_for_one_test(RecordingPlugin())
    scheme = _scheme(small_ct)
    scheme.train_step([_batch(1)], 1)
    # After the step D's parameters are trainable again, with no gradient left from G's step
    # accumulated into the next D update (zero_grad(set_to_none) before each backward).
    assert all(p.requires_grad for p in scheme.discriminator.parameters())


def test_supervised_scheme_lowers_its_loss(small_ct):
    recipe = tiny_recipe(small_ct)
    recipe["scheme"] = {"type": "supervised"}
    recipe["losses"] = {"pix": {"type": "mse"}}
    recipe["generator"] = {"type": "unet", "features": [8, 8, 8, 8, 8, 8]}
    recipe["optimizers"] = {"generator": {"type": "adam", "lr": 3e-3}}
    checked = validate(recipe, "test")
    torch.manual_seed(0)
    scheme = toolbox.build("schemes", checked["scheme"],
                           parts=Parts(checked.data, "test", torch.device("cpu"), toolbox.plugin_registry()))
    batch = _batch(3)
    first = scheme.train_step([batch], 1)["l_g_pix"]
    for step in range(2, 40):
        last = scheme.train_step([batch], step)["l_g_pix"]
    assert last < 0.7 * first


def test_amp_bf16_on_cpu_runs(small_ct, plugin_for_one_test):
    recipe = tiny_recipe(small_ct)
    recipe["train"]["amp"] = "bf16"
    checked = validate(recipe, "test")
    parts = Parts(checked.data, "test", torch.device("cpu"), toolbox.plugin_registry(), amp="bf16")
    scheme = toolbox.build("schemes", checked["scheme"], parts=parts)
    terms = scheme.train_step([_batch(0)], 1)
    assert all(torch.isfinite(torch.tensor(v)) for v in terms.values())


def test_fp16_skips_an_overflowing_step_and_lowers_the_loss_scale(small_ct, plugin_for_one_test):
    # fp16 autocast runs on CPU too; its GradScaler must see every backward of a scheme.
    checked = validate(tiny_recipe(small_ct), "test")
    parts = Parts(checked.data, "test", torch.device("cpu"), toolbox.plugin_registry(), amp="fp16")
    assert parts.amp_dtype is torch.float16 and parts.scaler.is_enabled()
    scheme = toolbox.build("schemes", checked["scheme"], parts=parts)
    terms = scheme.train_step([_batch(0)], 1)
    assert all(torch.isfinite(torch.tensor(v)) for v in terms.values())
    before = {k: v.detach().clone() for k, v in scheme.generator.named_parameters()}
    scale = parts.scaler.get_scale()
    with parts.autocast():
        output = scheme.generate(_batch(0)["input"])
    scheme.backward_step(output.float().sum() * float("inf"), scheme.opt_g)
    assert parts.scaler.get_scale() == scale / 2
    for key, value in scheme.generator.named_parameters():  # the step was skipped
        assert torch.equal(value, before[key]), key
    assert "scale" in scheme.state_dict()["scaler"]


@pytest.mark.parametrize("dims", [2, 3])
def test_channels_last_gives_the_same_step(dims, small_ct, plugin_for_one_test):
    recipe = tiny_recipe(small_ct, generator={"type": "unet", "features": [4, 4, 8, 8, 8, 4]},
                         losses={"pix": {"type": "l1"}}, scheme={"type": "supervised"})
    recipe["data"]["spatial_dims"] = dims
    recipe["data"]["patch_size"] = [16] * dims
    del recipe["discriminator"], recipe["optimizers"]["discriminator"]
    checked = validate(recipe, "test")
    g = torch.Generator().manual_seed(0)
    batch = {"input": torch.rand((2, 1) + (16,) * dims, generator=g)}
    batch["target"] = batch["input"].clone()
    losses = {}
    for layout in (False, True):
        torch.manual_seed(0)
        parts = Parts(checked.data, "test", torch.device("cpu"), toolbox.plugin_registry(), channels_last=layout)
        scheme = toolbox.build("schemes", checked["scheme"], parts=parts)
        moved = parts.to_device(batch)
        if layout:
            memory_format = torch.channels_last if dims == 2 else torch.channels_last_3d
            assert moved["input"].is_contiguous(memory_format=memory_format)
            weight = next(p for p in scheme.generator.parameters() if p.dim() == dims + 2)
            assert weight.is_contiguous(memory_format=memory_format)
        losses[layout] = [float(scheme.train_step([moved], step)["l_g_pix"]) for step in (1, 2)]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_a_run_with_fp16_and_channels_last_resumes_with_its_loss_scale(small_ct, tmp_path):
    from conftest import write_recipe
    from toolbox.cli import main

    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(small_ct))
    run = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(run), "train.amp=fp16", "train.channels_last=true"]) == 0
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert saved["recipe"]["train"]["amp"] == "fp16" and saved["scheme"]["scaler"]["scale"] > 0
    assert main(["run", "--resume", str(run), "train.steps=3"]) == 0


def test_relativistic_gan_terms_follow_esrgan_formula():
    ragan = toolbox.build("losses", {"type": "gan", "mode": "ragan"})
    real, fake = torch.tensor([2.0, 0.5, 1.0]), torch.tensor([-1.0, 0.0, 0.4])

    def bce(x, label):
        return float(0.5 * torch.nn.functional.binary_cross_entropy_with_logits(x, torch.full_like(x, label)))

    d = ragan.relative(real, fake, for_discriminator=True)
    g = ragan.relative(real, fake, for_discriminator=False)
    assert float(d["real"]) == pytest.approx(bce(real - fake.mean(), 1.0))
    assert float(d["fake"]) == pytest.approx(bce(fake - real.mean(), 0.0))
    assert float(g["real"]) == pytest.approx(bce(real - fake.mean(), 0.0))
    assert float(g["fake"]) == pytest.approx(bce(fake - real.mean(), 1.0))
    # Multi-scale discriminators: the mean over the maps.
    both = ragan.relative([real, 2 * real], [fake, 2 * fake], for_discriminator=True)
    other = ragan.relative(2 * real, 2 * fake, for_discriminator=True)
    assert float(both["fake"]) == pytest.approx((float(d["fake"]) + float(other["fake"])) / 2)
    with pytest.raises(ValueError, match="compares real and fake logits"):
        ragan(real, True)


def test_relativistic_generator_term_learns_from_the_real_images_too(small_ct, plugin_for_one_test):
    plugin_for_one_test(RecordingPlugin())
    recipe = tiny_recipe(small_ct)
    recipe["discriminator"] = {"type": "recording"}
    recipe["losses"]["adv"] = {"type": "gan", "mode": "ragan", "weight": 1.0}
    recipe["scheme"] = {"type": "paired_gan"}
    checked = validate(recipe, "test")
    parts = Parts(checked.data, "test", torch.device("cpu"), toolbox.plugin_registry())
    scheme = toolbox.build("schemes", checked["scheme"], parts=parts)
    batch = _batch(2)
    terms = {k: float(v) for k, v in scheme.train_step([batch], 1).items()}
    d = scheme.discriminator
    # D: real + fake; G: its output and, as constants, the real images.
    assert len(d.seen) == 4 and torch.equal(d.seen[3][:, 1:], batch["target"])
    assert all(torch.isfinite(torch.tensor(v)) for v in terms.values())
    assert all(p.requires_grad for p in d.parameters())


@pytest.mark.parametrize("best", ["psnr", "last"])
def test_train_best_picks_the_checkpoint_denoise_uses(small_ct, tmp_path, best):
    """`train.best: last` makes the last validated step best.pt (texture fine-tuning, where
    the highest PSNR is the least adversarial step); `psnr` keeps the highest PSNR."""
    import json

    from conftest import write_recipe
    from toolbox.cli import main

    recipe = tiny_recipe(small_ct)
    recipe["train"].update(steps=6, val_every=2, checkpoint_every=2, best=best)
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    scores = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [(row["step"], row["psnr"]) for row in scores if row.get("split") == "val" and "psnr" in row]
    kept = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)["step"]
    assert kept == (6 if best == "last" else max(val, key=lambda v: v[1])[0])
