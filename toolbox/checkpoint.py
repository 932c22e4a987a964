"""Checkpoints: written atomically, read without unpickling code (``weights_only=True``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from toolbox.errors import ToolboxError


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` and rename the file into place only once it is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would, so
        # that run folders and models on a shared file system stay readable by the group.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(path: Path, payload: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ToolboxError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure means "not a safe checkpoint"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ToolboxError(
            f"{path}: not a loadable toolbox checkpoint ({reason[:160]}); checkpoints are read "
            "with weights_only=True, so files that carry pickled code are refused"
        ) from error
    if not isinstance(payload, dict) or "recipe" not in payload:
        raise ToolboxError(f"{path}: not a toolbox checkpoint (no recipe inside)")
    return payload


# Format 2 keeps each thing once: the generator's weights live in the scheme's state under
# ``generator_module``, and the random states once per rank.  Format 1 (before 0.2) also had
# top-level "generator" and "rng" copies; both formats load.
FORMAT = 2


def generator_weights(payload: dict) -> dict:
    """The generator's state dict from a checkpoint of either format: the average of its
    weights when the run kept one (``train.ema``), which is what validation scored."""
    if "ema" in payload:
        return payload["ema"]["weights"]
    if "generator" in payload:  # format 1
        return payload["generator"]
    try:
        return payload["scheme"]["modules"][payload["generator_module"]]
    except (KeyError, TypeError) as error:
        raise ToolboxError(f"checkpoint without generator weights (missing {error})") from error


def rank_rng(payload: dict, rank: int, world_size: int) -> dict:
    """The random state rank ``rank`` resumes with (rank 0's when the world size changed)."""
    per_rank = payload.get("rng_ranks") or []
    if len(per_rank) == world_size:
        return per_rank[rank]
    return payload["rng"] if "rng" in payload else per_rank[0]
