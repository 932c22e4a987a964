"""A real third-party package, pip-installed, found through the `denoise_toolbox` entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_recipe, write_recipe

PACKAGES = Path(__file__).parent / "plugin_packages"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict:
    """Install the demo (and a broken) plugin into a private folder; return an environment."""
    target = tmp_path_factory.mktemp("site")
    for package in ("toolbox-demo-plugin", "toolbox-broken-plugin"):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
             "--target", str(target), str(PACKAGES / package)],
            check=True, capture_output=True, text=True,
        )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")])
    return env


def toolbox(env, *args):
    return subprocess.run([sys.executable, "-m", "toolbox", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


def test_installed_plugin_shows_in_plugins(site):
    result = toolbox(site, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["demo"]["version"] == "0.3.1"
    assert plugins["demo"]["source"] == "toolbox-demo-plugin"
    assert plugins["demo"]["hooks"] == ["register_generators", "register_losses"]
    assert plugins["demo"]["error"] is None


def test_broken_plugin_is_reported_and_does_not_take_the_cli_down(site):
    result = toolbox(site, "plugins", "--json")
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert "a_module_that_does_not_exist" in plugins["broken"]["error"]
    listing = toolbox(site, "list", "generators")
    assert listing.returncode == 0
    assert "demo_cnn" in listing.stdout
    assert "Warning: plugin 'broken' not loaded" in listing.stderr


def test_plugin_parts_are_usable_in_a_recipe(site, tmp_path, small_ct):
    recipe = tiny_recipe(small_ct)
    recipe["generator"] = {"type": "demo_cnn", "width": 6}
    recipe["losses"]["tv"] = {"type": "demo_tv", "weight": 0.1}
    path = write_recipe(tmp_path / "r.yaml", recipe)
    result = toolbox(site, "run", path, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "l_g_tv" in metrics
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["plugins"]["demo"] == "0.3.1"
