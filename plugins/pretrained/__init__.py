"""The pretrained models that ship with toolbox: every ``NAME.pt`` in this folder, with its
model card ``NAME.md`` (``toolbox models`` lists them; ``toolbox denoise --model NAME``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import toolbox


def _shipped() -> list[Path]:
    folder = resources.files(__name__)
    return sorted(Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".pt"))


@toolbox.hookimpl
def register_models(register):
    for path in _shipped():
        def locate(path=path) -> Path:
            return path

        locate.__doc__ = f"pretrained model {path.stem} ({path.name})"
        register(path.stem, locate)
