"""train.lr_schedule: the factors, the recipe checks, and what the optimizers see in a run."""

from __future__ import annotations

import pytest
import torch

import toolbox
from toolbox.lr_schedule import LearningRateSchedule


def test_step_halves_every_n_steps():
    schedule = LearningRateSchedule({"type": "step", "every": 10, "factor": 0.5}, 100)
    assert [schedule.factor_at(s) for s in (1, 10, 11, 20, 21, 31)] == [1, 1, 0.5, 0.5, 0.25, 0.125]


def test_multistep_and_warmup():
    schedule = LearningRateSchedule({"type": "multistep", "milestones": [5, 8], "factor": 0.1, "warmup": 4}, 10)
    assert schedule.factor_at(1) == pytest.approx(0.25)
    assert schedule.factor_at(5) == pytest.approx(1.0)
    assert schedule.factor_at(6) == pytest.approx(0.1)
    assert schedule.factor_at(9) == pytest.approx(0.01)


def test_cosine_runs_from_one_to_min_factor():
    schedule = LearningRateSchedule({"type": "cosine", "min_factor": 0.1}, 11)
    assert schedule.factor_at(1) == pytest.approx(1.0)
    assert schedule.factor_at(6) == pytest.approx(0.55)
    assert schedule.factor_at(11) == pytest.approx(0.1)


def test_apply_scales_from_the_base_rate_and_keeps_a_schemes_change():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=1e-3)
    schedule = LearningRateSchedule({"type": "step", "every": 1, "factor": 0.5}, 10)
    schedule.apply([optimizer], 3)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4)
    toolbox.Scheme.set_base_lr(optimizer, 1e-2)  # a phase of the method changes the rate
    schedule.apply([optimizer], 4)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.25e-3)


@pytest.mark.parametrize("spec, words", [
    ({"type": "linear"}, "unknown schedule"),
    ({"type": "step"}, "needs every"),
    ({"type": "multistep", "factor": 0.5}, "needs milestones"),
    ({"type": "cosine", "every": 3}, "not every"),
])
def test_bad_schedules_name_the_key(spec, words, tmp_path):
    recipe = {"data": {"train": str(tmp_path), "patch_size": [8, 8],
                       "noise": {"type": "gaussian", "sigma": 0.1}}, "generator": {"type": "unet"},
              "scheme": {"type": "supervised"}, "train": {"steps": 10, "lr_schedule": spec}}
    with pytest.raises(toolbox.RecipeError, match=words) as error:
        toolbox.validate_recipe(recipe, "r.yaml")
    assert "train.lr_schedule" in str(error.value)


def test_a_run_trains_on_the_scheduled_rate(small_ct, tmp_path):
    from conftest import tiny_recipe

    raw = tiny_recipe(small_ct)
    raw["train"].update(steps=4, lr_schedule={"type": "step", "every": 2, "factor": 0.5})
    run, _ = toolbox.run_training(toolbox.validate_recipe(raw, "tiny.yaml"), out=str(tmp_path / "run"))
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    for role in ("generator", "discriminator"):  # every optimizer the scheme tracks
        group = last["scheme"]["optimizers"][role]["param_groups"][0]
        assert group["lr"] == pytest.approx(5e-4) and group["initial_lr"] == pytest.approx(1e-3)
