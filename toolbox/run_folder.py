"""A run's folder: the resolved recipe, ``run.json``, metrics, checkpoints, and resuming.

Everything here but ``RunFolder.checkpoint`` runs on rank 0 alone; ``checkpoint`` is
collective (every rank hands in its random state and a fingerprint of its weights).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch
import yaml

from toolbox.meta import __version__
from toolbox.checkpoint import FORMAT, atomic_write, load_checkpoint, save_checkpoint
from toolbox.distributed import Ranks, gather_to_all, unwrap
from toolbox.errors import ToolboxError
from toolbox.rng import capture_rng


def check_run_dir(out: str | None) -> None:
    if out and Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):
        raise ToolboxError(f"{out}: the run folder exists and is not empty; pick another --out")


def _new_run_dir(name: str, out: str | None) -> Path:
    check_run_dir(out)
    if out:
        run_dir = Path(out)
    else:
        run_dir = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        suffix = 1
        while run_dir.exists():
            suffix += 1
            run_dir = run_dir.with_name(f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoints").mkdir(exist_ok=True)
    except OSError as error:
        raise ToolboxError(f"{run_dir}: cannot create the run folder ({error.strerror})") from error
    return run_dir


def environment(device: torch.device, plugin_versions: dict) -> dict:
    return {
        "toolbox": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "plugins": dict(plugin_versions),
        "command": sys.argv,
    }


def _fingerprint(modules: dict) -> list[float]:
    return [float(sum(p.detach().double().sum() for p in unwrap(m).parameters())) for m in modules.values()]


class RunFolder:
    """The folder of one training run."""

    def __init__(self, path: Path, ranks: Ranks):
        self.path = Path(path)
        self.ranks = ranks

    # -- creating and resuming ------------------------------------------------------------
    @classmethod
    def create(cls, recipe, out: str | None, run_info: dict, ranks: Ranks) -> Path:
        """A new run folder holding the resolved recipe (profile and overrides applied, so
        it re-runs as it is) and ``run.json`` (seed, sizes, versions, command)."""
        run_dir = _new_run_dir(recipe.get("name") or Path(recipe.source).stem, out)
        resolved = {k: v for k, v in recipe.data.items() if k != "profiles"}
        atomic_write(run_dir / "recipe.yaml",
                     lambda tmp: tmp.write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8"))
        atomic_write(run_dir / "run.json",
                     lambda tmp: tmp.write_text(json.dumps(run_info, indent=2), encoding="utf-8"))
        return run_dir

    @staticmethod
    def last_checkpoint(path: Path) -> dict:
        last_path = Path(path) / "checkpoints" / "last.pt"
        if not last_path.is_file():
            raise ToolboxError(f"{path}: no checkpoints/last.pt to resume from")
        return load_checkpoint(last_path)

    # -- metrics ----------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        """One metrics record (a JSON line in ``metrics.jsonl``); rank 0 only."""
        if not self.ranks.is_main:
            return
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """Drop records after ``step``: the resumed run writes them again."""
        path = self.path / "metrics.jsonl"
        if not self.ranks.is_main or not path.is_file():
            return
        kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        atomic_write(path, lambda tmp: tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8"))

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint(self, name: str, step: int, scheme, config: dict, best_psnr: float,
                   extra: dict | None = None) -> None:
        """Write ``checkpoints/<name>.pt`` (collective: call it on every rank)."""
        rng_ranks = gather_to_all(capture_rng())
        fingerprints = gather_to_all(_fingerprint(scheme.modules())) if self.ranks.distributed else []
        if any(f != fingerprints[0] for f in fingerprints):
            raise ToolboxError(f"step {step}: the ranks' weights differ ({fingerprints}); a scheme "
                               "must update every network on every rank")
        if not self.ranks.is_main:
            return
        payload = {
            "format": FORMAT,
            "step": step,
            "recipe": config,
            "scheme": scheme.state_dict(),
            "generator_module": scheme.generator_name(),
            "toolbox_version": __version__,
            "best_psnr": best_psnr,
            "rng_ranks": rng_ranks,
            "world_size": self.ranks.world_size,
            **(extra or {}),
        }
        save_checkpoint(self.path / "checkpoints" / f"{name}.pt", payload)
