"""Brief fuzzing: recipes and image files built at random must fail as user errors, never crash."""

from __future__ import annotations

import string

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SAMPLES, tiny_recipe
from toolbox import read_volume
from toolbox.errors import ToolboxError
from toolbox import load_recipe

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                    st.text(string.printable, max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(string.ascii_letters + "_.", max_size=10), inner, max_size=4)),
    max_leaves=12)


@SETTINGS
@given(path=st.lists(st.sampled_from(["data", "train", "generator", "losses", "scheme", "noise", "type",
                                      "patch_size", "steps", "normalize", "optimizers", "pix", "weight"]),
                     min_size=1, max_size=3),
       value=values)
def test_recipe_mutations_fail_cleanly(tmp_path_factory, small_ct, path, value):
    recipe = tiny_recipe(small_ct)
    node = recipe
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    file = tmp_path_factory.mktemp("fuzz") / "r.yaml"
    file.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    try:
        load_recipe(file)
    except ToolboxError:
        pass  # a one-line user error: what we want


@SETTINGS
@given(text=st.text(max_size=200))
def test_arbitrary_text_as_a_recipe(tmp_path_factory, text):
    file = tmp_path_factory.mktemp("fuzz") / "r.yaml"
    file.write_text(text, encoding="utf-8")
    with pytest.raises(ToolboxError):
        load_recipe(file)


SOURCES = {
    ".nii.gz": (SAMPLES / "ct" / "test" / "chest_small.nii.gz").read_bytes(),
    ".tif": (SAMPLES / "fluorescence" / "test" / "nuclei_right.tif").read_bytes(),
}


@SETTINGS
@given(suffix=st.sampled_from(sorted(SOURCES)), cut=st.floats(0.0, 1.0),
       flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=8))
def test_damaged_image_files_fail_cleanly(tmp_path_factory, suffix, cut, flips):
    data = bytearray(SOURCES[suffix][: max(1, int(len(SOURCES[suffix]) * cut))])
    for where, byte in flips:
        data[int(where * (len(data) - 1))] = byte
    file = tmp_path_factory.mktemp("fuzz") / f"x{suffix}"
    file.write_bytes(bytes(data))
    try:
        volume = read_volume(file)
    except ToolboxError:
        return
    assert np.isfinite(volume.array).all() and volume.array.size > 0
