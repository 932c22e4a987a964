"""``toolbox plugin new NAME``: an installable plugin package that passes its own tests.

The package has a pyproject with the entry point, one generator and one loss registered
through hooks, and tests that run ``toolbox.testing``'s contract checks on them.
"""

from __future__ import annotations

import re
from pathlib import Path

from toolbox.errors import ToolboxError
from toolbox.meta import ENTRY_POINT_GROUP

_PYPROJECT = '''[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "toolbox-{dist}"
version = "0.1.0"
description = "A toolbox plugin: {name}"
requires-python = ">=3.10"
dependencies = ["denoise-toolbox"]

[project.entry-points.{group}]
{name} = "{package}.plugin"

[tool.setuptools]
packages = ["{package}"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

_PLUGIN = '''"""The {name} plugin for toolbox: a generator and a loss (rename and grow them).

Hooks and their contracts: ``toolbox/hookspecs.py``; the public API: ``help(toolbox)``.
"""

import torch
from monai.networks.layers import Conv

import toolbox


class {camel}CNN(torch.nn.Module):
    """A small residual CNN: predicts the noise and subtracts it (2D and 3D)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, width: int = 16, depth: int = 3):
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]  # one class serves 2D and 3D
        layers, channels = [], in_channels
        for _ in range(depth - 1):
            layers += [conv(channels, width, 3, padding=1), torch.nn.ReLU()]
            channels = width
        layers.append(conv(channels, out_channels, 3, padding=1))
        self.body = torch.nn.Sequential(*layers)
        self.residual = in_channels == out_channels

    def forward(self, x):
        noise = self.body(x)
        return x - noise if self.residual else noise


class {camel}TotalVariation(torch.nn.Module):
    """Total variation of the prediction: the mean absolute difference of neighbours."""

    def forward(self, prediction, target):
        return sum(prediction.diff(dim=d).abs().mean() for d in range(2, prediction.ndim))


@toolbox.hookimpl
def register_generators(register):
    register("{name}_cnn", {camel}CNN, example={{"width": 4, "depth": 2}})


@toolbox.hookimpl
def register_losses(register):
    register("{name}_tv", {camel}TotalVariation)
'''

_TESTS = '''"""The contract checks toolbox runs on its own parts, run on this plugin's parts."""

import pytest

import toolbox
import toolbox.testing as contract


def test_the_plugin_is_installed():
    assert "{name}_cnn" in toolbox.components("generators")
    assert "{name}_tv" in toolbox.components("losses")


@pytest.mark.parametrize("dims", [2, 3])
def test_generator_contract(dims):
    contract.check_generator("{name}_cnn", dims)


def test_loss_contract():
    contract.check_loss("{name}_tv")


def test_one_training_step_with_the_generator():
    contract.check_scheme("supervised", generator={{"type": "{name}_cnn", "width": 4}})
'''

_README = '''# toolbox-{dist}

A plugin for [toolbox](https://pypi.org/project/denoise-toolbox/): generator `{name}_cnn`
and loss `{name}_tv`.

```bash
pip install -e .            # toolbox finds it through the `{group}` entry point
toolbox plugins             # lists `{name}`
python -m pytest -q         # toolbox's contract checks on this plugin's parts
```

In a recipe: `generator: {{type: {name}_cnn, width: 32}}`.
'''


def new_plugin(name: str, where: Path = Path(".")) -> Path:
    """Write the package ``where/NAME`` and return its folder."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ToolboxError(f"'{name}': a plugin name is lower-case letters, digits and _ (e.g. my_denoiser)")
    root = Path(where) / name
    if root.exists():
        raise ToolboxError(f"{root}: already exists; pick another name or folder")
    package = f"toolbox_{name}"
    values = {"name": name, "package": package, "dist": name.replace("_", "-"), "group": ENTRY_POINT_GROUP,
              "camel": "".join(part.capitalize() for part in name.split("_"))}
    files = {
        "pyproject.toml": _PYPROJECT,
        "README.md": _README,
        f"{package}/__init__.py": '"""toolbox plugin {name}."""\n',
        f"{package}/plugin.py": _PLUGIN,
        "tests/test_plugin.py": _TESTS,
    }
    try:
        for relative, template in files.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(template.format(**values), encoding="utf-8")
    except OSError as error:
        raise ToolboxError(f"{root}: cannot write the package ({error.strerror})") from error
    return root
