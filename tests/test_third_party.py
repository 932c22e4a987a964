"""A real third-party package, pip-installed, found through the `denoise_toolbox` entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import numpy as np

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
    assert plugins["demo"]["hooks"] == ["register_formats", "register_generators", "register_losses"]
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


def test_a_third_party_format_feeds_denoise(site, tmp_path, percentile_model):
    """The demo package registers a made-up format (``.toy``); ``toolbox denoise`` reads it,
    denoises it and writes it back in that format, through the registered formats alone."""
    rng = np.random.default_rng(0)
    image = np.clip(1000 + 300 * rng.standard_normal((40, 52)), 0, 65535).astype("<u2")
    source = tmp_path / "scan.toy"
    source.write_bytes(b"TOYIMG 40 52\n" + image.tobytes())
    result = toolbox(site, "denoise", percentile_model, source, "-o", tmp_path / "out.toy")
    assert result.returncode == 0, result.stderr
    header, _, body = (tmp_path / "out.toy").read_bytes().partition(b"\n")
    assert header == b"TOYIMG 40 52"
    denoised = np.frombuffer(body, dtype="<u2").reshape(40, 52).astype(float)
    assert denoised.shape == image.shape and not np.array_equal(denoised, image)  # through the model
    # Chosen by content too: the same file under a name no format claims.
    renamed = tmp_path / "scan.raw"
    renamed.write_bytes(source.read_bytes())
    again = toolbox(site, "denoise", percentile_model, renamed, "-o", tmp_path / "renamed_out.raw")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "renamed_out.raw").read_bytes().startswith(b"TOYIMG 40 52")


def test_plugin_new_writes_a_package_that_passes_its_own_tests(tmp_path):
    """`toolbox plugin new demo_kit`, installed, passes the contract tests it ships."""
    from toolbox.cli import main

    assert main(["plugin", "new", "demo_kit", "--directory", str(tmp_path)]) == 0
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                              "--no-build-isolation", "--target", str(target), str(tmp_path / "demo_kit")],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")])
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "demo_kit")],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert "5 passed" in tests.stdout
    assert main(["plugin", "new", "demo_kit", "--directory", str(tmp_path)]) == 2  # never overwrites
