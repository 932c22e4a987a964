"""``toolbox interpolate A B --alpha X -o C``: network interpolation (ESRGAN, Wang et al. 2018).

Every weight of the generator becomes ``(1 - alpha) * A + alpha * B``.  With A a fidelity
model (L1 / MSE) and B its adversarial fine-tune, alpha walks the perception-distortion
curve without retraining: 0 is A's smooth, high-PSNR output, 1 is B's textured one.  Both
must be the same generator (one started from the other, as ESRGAN's are), or the average of
their weights means nothing: the recipes' generators and data interfaces must match.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from toolbox.checkpoint import FORMAT, generator_weights, load_checkpoint, save_checkpoint
from toolbox.errors import ToolboxError
from toolbox.pretrained import check_same_generator, resolve


def interpolate(first: str, second: str, alpha: float, output: Path, registry, overwrite: bool = False) -> Path:
    """``first`` and ``second``: pretrained models' names, run folders or checkpoint files."""
    if not 0.0 <= alpha <= 1.0:
        raise ToolboxError(f"--alpha must be between 0 (the first model) and 1 (the second), got {alpha}")
    output = Path(output)
    if output.exists() and not overwrite:
        raise ToolboxError(f"{output}: already exists; pass --overwrite to replace it")
    paths = [resolve(registry, str(first)), resolve(registry, str(second))]
    if output.resolve() in {p.resolve() for p in paths}:
        raise ToolboxError(f"{output}: is one of the models; write the interpolation elsewhere")
    payloads = [load_checkpoint(p) for p in paths]
    recipes = [p["recipe"] for p in payloads]
    check_same_generator(recipes[1], recipes[0], f"{paths[1]} (interpolate a model with its own fine-tune)",
                         str(paths[0]))
    weights = [generator_weights(p) for p in payloads]
    if weights[0].keys() != weights[1].keys() or any(weights[0][k].shape != weights[1][k].shape for k in weights[0]):
        raise ToolboxError(f"{paths[1]}: its weights do not have the shapes of {paths[0]}'s")
    mixed = {}
    for key, a in weights[0].items():
        b = weights[1][key]
        # Integer buffers (BatchNorm's batch counters) cannot be averaged: the second model's.
        mixed[key] = torch.lerp(a.float(), b.float(), alpha).to(a.dtype) if a.is_floating_point() else b.clone()
    recipe = copy.deepcopy(recipes[0])
    recipe["name"] = f"{recipes[0].get('name') or 'model'}~{recipes[1].get('name') or 'model'}@{alpha:g}"
    payload = {
        "format": FORMAT,
        "step": payloads[1].get("step", 0),
        "recipe": recipe,
        "scheme": {"modules": {"generator": mixed}},
        "generator_module": "generator",
        "interpolated": {"first": str(paths[0]), "second": str(paths[1]), "alpha": alpha},
    }
    save_checkpoint(output, payload)
    return output
