"""The training loop: build every part, step the scheme, validate, log, checkpoint.

It knows nothing about GANs: what one step does is the registered scheme's business.
"""

from __future__ import annotations

import functools
import json
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from toolbox import __version__
from toolbox.checkpoint import atomic_write, save_checkpoint
from toolbox.errors import ToolboxError
from toolbox.recipe import Recipe


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict:
    """Every global random state, as tensors and numbers (loadable with weights_only=True)."""
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(numpy_state[1].astype(np.int64)), "pos": int(numpy_state[2]),
                  "has_gauss": int(numpy_state[3]), "gauss": float(numpy_state[4])},
        "python": {"version": python_state[0], "state": torch.tensor(python_state[1], dtype=torch.int64),
                   "gauss": python_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ToolboxError("train.device is 'cuda' but no CUDA device is visible; use auto or cpu")
    return torch.device(name)


def check_run_dir(out: str | None) -> None:
    if out and Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):
        raise ToolboxError(f"{out}: the run folder exists and is not empty; pick another --out")


def make_run_dir(recipe: Recipe, out: str | None, recipe_path: str) -> Path:
    check_run_dir(out)
    if out:
        run_dir = Path(out)
    else:
        name = recipe.get("name") or Path(recipe_path).stem
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


def make_console():
    """A rich console; logs and CI (not a terminal) get 120 columns so tables do not wrap."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=120)


class MetricsLog:
    """Metrics as JSON lines in the run folder (one object per event)."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


@dataclass
class EvalRow:
    name: str
    psnr_noisy: float
    ssim_noisy: float
    psnr: float
    ssim: float


def evaluate_held_out(generator, held_out, spatial_dims, roi, overlap, device, amp_dtype=None,
                      limit: int = 0, keep: bool = False, context: int = 1):
    """PSNR/SSIM of noisy and denoised held-out images; ``keep`` also returns the outputs."""
    from toolbox.infer import denoise_array
    from toolbox.metrics import psnr_ssim

    rows, outputs = [], []
    for item in held_out[: limit or None]:
        denoised = torch.from_numpy(denoise_array(
            generator, spatial_dims, roi, item.noisy.numpy(), item.slice_axis, device, overlap,
            autocast_dtype=amp_dtype, context=context))
        dims = item.clean.ndim - 1
        pn, sn = psnr_ssim(item.noisy, item.clean, dims)
        pd, sd = psnr_ssim(denoised, item.clean, dims)
        rows.append(EvalRow(item.name, pn, sn, pd, sd))
        if keep:
            outputs.append(denoised.numpy())
    return (rows, outputs) if keep else rows


def write_held_out_outputs(run_dir: Path, held_out, outputs, rows, description: str) -> list[Path]:
    """Figures (noisy | denoised | clean) and the noisy / denoised images in the input's units."""
    from toolbox.evaluate import write_figure
    from toolbox.io import write_volume

    written = []
    for item, denoised, row in zip(held_out, outputs, rows):
        stem = item.name.split(".")[0]
        figure = run_dir / "figures" / f"{stem}.png"
        write_figure(figure, [("noisy", item.noisy.numpy(), (row.psnr_noisy, row.ssim_noisy)),
                              ("denoised", denoised, (row.psnr, row.ssim)),
                              ("clean", item.clean.numpy(), None)], item.slice_axis)
        written.append(figure)
        if item.volume is None:  # read through a MONAI reader: no template to write back
            continue
        shape = item.volume.array.shape
        for prefix, image in (("noisy", item.noisy.numpy()), ("denoised", denoised)):
            units = item.normalizer.inverse(image).reshape(shape)
            written.append(write_volume(item.volume, units, run_dir / "held_out" / f"{prefix}_{item.name}",
                                        f"{prefix} {description}"[:60], overwrite=True))
    return written


def mean(rows, attr):
    return float(np.mean([getattr(r, attr) for r in rows])) if rows else float("nan")


def _environment(device: torch.device) -> dict:
    from toolbox.plugins import plugin_versions

    return {
        "toolbox": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "plugins": plugin_versions(),
        "command": sys.argv,
    }


def _loader(dataset, batch_size: int, start_index: int, total: int, num_workers: int, seed: int):
    # Indices run on from where the last step stopped: sample i is a pure function of
    # (seed, i), so a resumed run sees the same samples as an uninterrupted one.
    indices = range(start_index, total)
    subset = torch.utils.data.Subset(dataset, indices)
    return torch.utils.data.DataLoader(
        subset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        drop_last=True, persistent_workers=False,
        worker_init_fn=functools.partial(_seed_worker, seed),
    )


def _seed_worker(seed: int, worker: int) -> None:
    seed_everything(seed + worker)


def run_training(recipe: Recipe, out: str | None = None, console=None,
                 resume: Path | None = None) -> tuple[Path, dict]:
    """Train what ``recipe`` describes; the run folder is created only once all parts built.

    ``resume``: a run folder to continue from its last complete checkpoint (models,
    optimizers, scaler, step, best score, every random state; the data sampler is a pure
    function of the step), so the result equals an uninterrupted run's.
    """
    from toolbox.checkpoint import load_checkpoint
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from toolbox.data.datasets import build_data
    from toolbox.plugins import get_registry
    from toolbox.scheme import Parts

    console = console or make_console()
    if resume is None:
        check_run_dir(out)
    else:
        last_path = Path(resume) / "checkpoints" / "last.pt"
        if not last_path.is_file():
            raise ToolboxError(f"{resume}: no checkpoints/last.pt to resume from")
        last = load_checkpoint(last_path)
    config = recipe.data
    train_cfg = config["train"]
    seed = int(config["seed"])
    seed_everything(seed)
    device = pick_device(train_cfg["device"])

    # Everything is built and checked before the first batch.
    data = build_data(config, recipe.source)
    if not data.held_out:
        raise ToolboxError(f"{recipe.source}: give data.val (held-out images) to validate on")
    parts = Parts(config, recipe.source, device, amp=train_cfg["amp"])
    scheme = get_registry().build("schemes", config["scheme"], recipe.source, "scheme", parts=parts)
    if scheme.generator is None:
        raise ToolboxError(f"scheme '{config['scheme']['type']}' did not set its generator")
    n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in scheme.modules().items()}
    start_step, best_psnr = 0, -float("inf")
    if resume is None:
        run_dir = make_run_dir(recipe, out, recipe.source)
        # The resolved recipe (profile and overrides applied) re-runs as it is.
        resolved = {k: v for k, v in config.items() if k != "profiles"}
        atomic_write(run_dir / "recipe.yaml",
                     lambda tmp: tmp.write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8"))
        run_info = {"seed": seed, "profile": recipe.profile, "parameters": n_params, **_environment(device)}
        atomic_write(run_dir / "run.json",
                     lambda tmp: tmp.write_text(json.dumps(run_info, indent=2), encoding="utf-8"))
    else:
        run_dir = Path(resume)
        scheme.load_state_dict(last["scheme"])
        start_step, best_psnr = int(last["step"]), float(last.get("best_psnr", -float("inf")))
        restore_rng(last["rng"])
        _truncate_metrics(run_dir / "metrics.jsonl", start_step)
    log = MetricsLog(run_dir / "metrics.jsonl")

    roi = config["data"]["patch_size"]
    overlap = float(train_cfg["val_overlap"])
    dims = data.spatial_dims
    limit = train_cfg["val_max_images"]
    context = config["data"].get("context_slices", 1)
    console.print(
        f"[bold]toolbox run[/] {recipe.source} -> {run_dir}  device={device}  "
        + "  ".join(f"{k}={v / 1e6:.2f}M params" for k, v in n_params.items())
    )
    if resume is None:
        baseline = evaluate_held_out(scheme.generator, data.held_out, dims, roi, overlap, device,
                                     parts.amp_dtype, limit, context=context)
        log.write({"step": 0, "split": "val", "psnr_noisy": mean(baseline, "psnr_noisy"),
                   "ssim_noisy": mean(baseline, "ssim_noisy")})
    else:
        console.print(f"Resuming {run_dir} after step {start_step}")

    steps = int(train_cfg["steps"])
    batch_size = int(train_cfg["batch_size"])
    per_step = int(getattr(scheme, "batches_per_step", 1))
    if start_step >= steps:
        raise ToolboxError(f"{run_dir}: already trained {start_step} of {steps} steps; "
                           "raise train.steps to train on")
    loader = _loader(data.train, batch_size, start_step * per_step * batch_size,
                     steps * per_step * batch_size, int(train_cfg["num_workers"]), seed)
    running: dict[str, float] = {}
    started = time.time()

    def checkpoint(name: str, step: int, extra: dict | None = None) -> None:
        payload = {
            "format": 1,
            "step": step,
            "recipe": config,
            "scheme": scheme.state_dict(),
            "generator": scheme.generator.state_dict(),
            "toolbox_version": __version__,
            "best_psnr": best_psnr,
            "rng": capture_rng(),
            **(extra or {}),
        }
        save_checkpoint(run_dir / "checkpoints" / f"{name}.pt", payload)

    progress = Progress(
        TextColumn("[bold blue]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[losses]}"),
        console=console, transient=False,
    )
    scheme.train(True)
    batches_iter = iter(loader)
    with progress:
        task = progress.add_task("train", total=steps, losses="", completed=start_step)
        for step in range(start_step + 1, steps + 1):
            batches = []
            for _ in range(per_step):
                batch = next(batches_iter)
                batches.append({k: v.to(device, non_blocking=True) for k, v in batch.items()})
            terms = scheme.train_step(batches, step)
            for key, value in terms.items():
                if not np.isfinite(value):
                    raise ToolboxError(
                        f"training diverged at step {step}: {key} = {value}; lower the learning "
                        "rate or check the data normalisation"
                    )
                running[key] = value if key not in running else 0.9 * running[key] + 0.1 * value
            if step % train_cfg["log_every"] == 0 or step == steps:
                log.write({"step": step, "split": "train", **terms,
                           "seconds": round(time.time() - started, 2)})
                progress.update(task, losses=" ".join(f"{k}={v:.4g}" for k, v in running.items()))
            if step % train_cfg["val_every"] == 0 or step == steps:
                rows = evaluate_held_out(scheme.generator, data.held_out, dims, roi, overlap,
                                         device, parts.amp_dtype, limit, context=context)
                psnr, ssim = mean(rows, "psnr"), mean(rows, "ssim")
                log.write({"step": step, "split": "val", "psnr": psnr, "ssim": ssim})
                if psnr > best_psnr:
                    best_psnr = psnr
                    checkpoint("best", step, {"val_psnr": psnr, "val_ssim": ssim})
                scheme.train(True)
            if step % train_cfg["checkpoint_every"] == 0 or step == steps:
                checkpoint("last", step)
            progress.advance(task)

    # Final report on every held-out image with the best checkpoint.
    from toolbox.checkpoint import load_checkpoint

    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    scheme.generator.load_state_dict(best["generator"])
    rows, outputs = evaluate_held_out(scheme.generator, data.held_out, dims, roi, overlap, device,
                                      parts.amp_dtype, keep=True, context=context)
    written = write_held_out_outputs(run_dir, data.held_out, outputs, rows,
                                     f"{config.get('name') or 'model'} step {best['step']}")
    report = {
        "data_range": 1.0,
        "intensity": data.normalize_note,
        "best_step": best["step"],
        "images": [r.__dict__ for r in rows],
        "mean": {k: mean(rows, k) for k in ("psnr_noisy", "ssim_noisy", "psnr", "ssim")},
        "seconds": round(time.time() - started, 1),
        "outputs": [str(p) for p in written],
    }
    atomic_write(run_dir / "eval.json",
                 lambda tmp: tmp.write_text(json.dumps(report, indent=2), encoding="utf-8"))
    print_report(report, console)
    console.print(f"Figures in {run_dir / 'figures'}; noisy and denoised held-out images in "
                  f"{run_dir / 'held_out'}")
    return run_dir, report


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records after ``step``: the resumed run writes them again."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    atomic_write(path, lambda tmp: tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8"))


def print_report(report: dict, console) -> None:
    from rich.table import Table

    table = Table(
        title=f"Held-out images (PSNR/SSIM, data range {report['data_range']} = {report['intensity']})"
    )
    for column in ("image", "PSNR noisy", "PSNR denoised", "gain dB", "SSIM noisy", "SSIM denoised"):
        table.add_column(column, justify="left" if column == "image" else "right", no_wrap=True)
    for r in report["images"]:
        table.add_row(r["name"], f"{r['psnr_noisy']:.2f}", f"{r['psnr']:.2f}",
                      f"{r['psnr'] - r['psnr_noisy']:+.2f}", f"{r['ssim_noisy']:.3f}", f"{r['ssim']:.3f}")
    m = report["mean"]
    table.add_row("[bold]mean", f"{m['psnr_noisy']:.2f}", f"{m['psnr']:.2f}",
                  f"{m['psnr'] - m['psnr_noisy']:+.2f}", f"{m['ssim_noisy']:.3f}", f"{m['ssim']:.3f}")
    console.print(table)
