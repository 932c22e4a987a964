"""Strict recipes: schema errors name the file and key path; overrides never evaluate."""

from __future__ import annotations

import pytest

from conftest import ROOT, tiny_recipe, write_recipe
from toolbox.errors import RecipeError
from toolbox import load_recipe
from toolbox.recipe import parse_yaml


def test_scientific_notation_is_a_float():
    assert parse_yaml("lr: 1e-4\nother: 2.5E+3\nint: 10", "x") == {"lr": 1e-4, "other": 2500.0, "int": 10}


def test_unknown_key_names_file_and_path(tmp_path, small_ct):
    recipe = tiny_recipe(small_ct)
    recipe["train"]["stepz"] = 3
    path = write_recipe(tmp_path / "r.yaml", recipe)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message and "key 'train.stepz'" in message and "Did you mean 'steps'" in message


def test_unknown_top_level_section(tmp_path, small_ct):
    recipe = tiny_recipe(small_ct, generater={"type": "unet"})
    with pytest.raises(RecipeError, match="unknown key 'generater'. Did you mean 'generator'"):
        load_recipe(write_recipe(tmp_path / "r.yaml", recipe))


def test_wrong_type_is_reported(tmp_path, small_ct):
    recipe = tiny_recipe(small_ct)
    recipe["train"]["batch_size"] = "four"
    with pytest.raises(RecipeError, match="key 'train.batch_size': expected an integer, got 'four'"):
        load_recipe(write_recipe(tmp_path / "r.yaml", recipe))


def test_bool_is_not_an_integer(tmp_path, small_ct):
    recipe = tiny_recipe(small_ct)
    recipe["train"]["steps"] = True
    with pytest.raises(RecipeError, match="train.steps"):
        load_recipe(write_recipe(tmp_path / "r.yaml", recipe))


def test_required_keys(tmp_path, small_ct):
    recipe = tiny_recipe(small_ct)
    del recipe["train"]["steps"]
    with pytest.raises(RecipeError, match="key 'train.steps': is required"):
        load_recipe(write_recipe(tmp_path / "r.yaml", recipe))


def test_patch_size_must_match_dimensions(tmp_path, small_ct):
    recipe = tiny_recipe(small_ct)
    recipe["data"]["patch_size"] = [32, 32, 32]
    with pytest.raises(RecipeError, match="data.patch_size"):
        load_recipe(write_recipe(tmp_path / "r.yaml", recipe))


def test_part_options_are_checked(tmp_path, small_ct):
    recipe = tiny_recipe(small_ct)
    recipe["discriminator"]["layers"] = 3
    with pytest.raises(RecipeError, match="key 'discriminator.layers'.*Did you mean 'num_layers'"):
        load_recipe(write_recipe(tmp_path / "r.yaml", recipe))


def test_loss_weight_must_be_a_number(tmp_path, small_ct):
    recipe = tiny_recipe(small_ct)
    recipe["losses"]["pix"]["weight"] = "heavy"
    with pytest.raises(RecipeError, match="losses.pix.weight"):
        load_recipe(write_recipe(tmp_path / "r.yaml", recipe))


def test_overrides_set_nested_values_and_parse_yaml(tmp_path, small_ct):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(small_ct))
    recipe = load_recipe(path, ["train.steps=7", "optimizers.generator.lr=3e-5",
                                "data.noise.sigma=[0.05, 0.2]", "train.device=cpu"])
    assert recipe["train"]["steps"] == 7
    assert recipe["optimizers"]["generator"]["lr"] == 3e-5
    assert recipe["data"]["noise"]["sigma"] == [0.05, 0.2]


def test_overrides_are_never_evaluated(tmp_path, small_ct):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(small_ct))
    marker = tmp_path / "pwned"
    with pytest.raises(RecipeError, match="name"):
        load_recipe(path, [f"name=!!python/object/apply:os.system ['touch {marker}']"])
    assert not marker.exists()
    recipe = load_recipe(path, ["name=__import__('os').getcwd()"])
    assert recipe["name"] == "__import__('os').getcwd()"


def test_override_of_an_unknown_key_is_rejected(tmp_path, small_ct):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(small_ct))
    with pytest.raises(RecipeError, match="unknown key 'epochs'"):
        load_recipe(path, ["train.epochs=3"])


def test_override_must_have_an_equals_sign(tmp_path, small_ct):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(small_ct))
    with pytest.raises(RecipeError, match="key.path=value"):
        load_recipe(path, ["train.steps"])


def test_invalid_yaml_reports_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  steps: [1, 2\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"broken.yaml: not valid YAML \(line"):
        load_recipe(path)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "nope.yaml")


def test_relative_data_paths_resolve_from_the_recipe_folder():
    recipe = load_recipe(ROOT / "recipes" / "pix2pix_ct.yaml")
    assert recipe["data"]["train"] == str((ROOT / "samples" / "ct" / "train").resolve())


def test_window_needs_its_bounds(tmp_path, small_ct):
    recipe = tiny_recipe(small_ct)
    recipe["data"]["normalize"] = {"type": "window", "low": -1000}
    with pytest.raises(RecipeError, match="window needs low and high"):
        load_recipe(write_recipe(tmp_path / "r.yaml", recipe))
