"""The training loop: build every part, step the scheme, validate, log, checkpoint.

It knows nothing about GANs: what one step does is the registered scheme's business.
"""

from __future__ import annotations

import dataclasses
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
from toolbox.distributed import (Ranks, barrier, broadcast_from_main, gather_to_all, init_distributed,
                                 mean_over_ranks, run_on_main, unwrap)
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
    data_range: float = 1.0


def evaluate_held_out(generator, held_out, spatial_dims, roi, norm_spec, overlap, device, amp_dtype=None,
                      limit: int = 0, keep: bool = False, context: int = 1):
    """PSNR/SSIM of noisy and denoised held-out images in their own units, each denoised as
    ``toolbox denoise`` would; ``keep`` also returns the outputs."""
    from toolbox.infer import denoise_units
    from toolbox.metrics import psnr_ssim

    rows, outputs = [], []
    for item in held_out[: limit or None]:
        denoised = denoise_units(generator, spatial_dims, roi, norm_spec, item.noisy, item.slice_axis, device,
                                 overlap, autocast_dtype=amp_dtype, context=context)
        dims = item.clean.ndim - 1
        pn, sn = psnr_ssim(item.noisy, item.clean, dims, item.data_range)
        pd, sd = psnr_ssim(denoised, item.clean, dims, item.data_range)
        rows.append(EvalRow(item.name, pn, sn, pd, sd, item.data_range))
        if keep:
            outputs.append(denoised)
    return (rows, outputs) if keep else rows


def write_held_out_outputs(run_dir: Path, held_out, outputs, rows, description: str) -> list[Path]:
    """Figures (noisy | denoised | clean) and the noisy / denoised images in the input's units."""
    from toolbox.evaluate import write_figure
    from toolbox.io import write_volume

    written = []
    for item, denoised, row in zip(held_out, outputs, rows):
        stem = item.name.split(".")[0]
        figure = run_dir / "figures" / f"{stem}.png"
        write_figure(figure, [("noisy", item.noisy, (row.psnr_noisy, row.ssim_noisy)),
                              ("denoised", denoised, (row.psnr, row.ssim)),
                              ("clean", item.clean, None)], item.slice_axis, item.display)
        written.append(figure)
        if item.volume is None:  # read through a MONAI reader: no template to write back
            continue
        template, shape = item.volume, item.volume.array.shape
        if template.format == "nifti":  # float32, so that the files hold what was scored
            template = dataclasses.replace(template, stored_dtype=np.dtype(np.float32),
                                           value_range=(-np.inf, np.inf))
        for prefix, units in (("noisy", item.noisy), ("denoised", denoised)):
            written.append(write_volume(template, units.reshape(shape),
                                        run_dir / "held_out" / f"{prefix}_{item.name}",
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


def batch_indices(batch_size: int, start_batch: int, total_batches: int, ranks: Ranks) -> list[int]:
    """The sample indices this rank draws, batch after batch.

    Sample i is a pure function of (seed, i).  Global batch b is samples
    [b * world * size, (b + 1) * world * size), of which rank r takes the r-th slice: so a
    resumed run sees the samples an uninterrupted one would, and N ranks with batch B see
    what one process with batch N * B sees.
    """
    world, size = ranks.world_size, batch_size
    return [(b * world + ranks.rank) * size + j for b in range(start_batch, total_batches) for j in range(size)]


def _loader(dataset, batch_size: int, indices: list[int], num_workers: int, seed: int):
    subset = torch.utils.data.Subset(dataset, indices)
    return torch.utils.data.DataLoader(
        subset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        drop_last=True, persistent_workers=False,
        worker_init_fn=functools.partial(_seed_worker, seed),
    )


def _seed_worker(seed: int, worker: int) -> None:
    seed_everything(seed + worker)


def _fingerprint(modules: dict) -> list[float]:
    return [float(sum(p.detach().double().sum() for p in unwrap(m).parameters())) for m in modules.values()]


def run_training(recipe: Recipe, out: str | None = None, console=None,
                 resume: Path | None = None) -> tuple[Path, dict | None]:
    """Train what ``recipe`` describes; the run folder is created only once all parts built.

    ``resume``: a run folder to continue from its last complete checkpoint (models,
    optimizers, scaler, step, best score, every random state; the data sampler is a pure
    function of the step), so the result equals an uninterrupted run's.

    Under ``torchrun`` every rank trains on its share of each batch (DDP averages the
    gradients); rank 0 alone validates, logs and writes the run folder, and alone returns
    the report (the others return ``None``).
    """
    from toolbox.checkpoint import load_checkpoint
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from toolbox.data.datasets import build_data
    from toolbox.plugins import get_registry
    from toolbox.scheme import Parts

    config = recipe.data
    train_cfg = config["train"]
    ranks, device = init_distributed(train_cfg["device"])
    console = console or make_console()
    if not ranks.is_main:
        from rich.console import Console

        console = Console(quiet=True)
    if resume is None:
        run_on_main(ranks, lambda: check_run_dir(out))
    else:
        last_path = Path(resume) / "checkpoints" / "last.pt"
        if not last_path.is_file():
            raise ToolboxError(f"{resume}: no checkpoints/last.pt to resume from")
        last = load_checkpoint(last_path)
    seed = int(config["seed"])
    seed_everything(seed)

    # Everything is built and checked before the first batch.
    data = build_data(config, recipe.source)
    if not data.held_out:
        raise ToolboxError(f"{recipe.source}: give data.val (held-out images) to validate on")
    parts = Parts(config, recipe.source, device, amp=train_cfg["amp"],
                  channels_last=train_cfg["channels_last"],
                  find_unused_parameters=train_cfg["find_unused_parameters"])
    scheme = get_registry().build("schemes", config["scheme"], recipe.source, "scheme", parts=parts)
    if scheme.generator is None:
        raise ToolboxError(f"scheme '{config['scheme']['type']}' did not set its generator")
    parts.check_networks()
    generator = unwrap(scheme.generator)  # validation runs on rank 0 alone, outside DDP
    n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in scheme.modules().items()}
    start_step, best_psnr = 0, -float("inf")
    if resume is None:
        def create_run_dir() -> Path:
            run_dir = make_run_dir(recipe, out, recipe.source)
            # The resolved recipe (profile and overrides applied) re-runs as it is.
            resolved = {k: v for k, v in config.items() if k != "profiles"}
            atomic_write(run_dir / "recipe.yaml",
                         lambda tmp: tmp.write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8"))
            run_info = {"seed": seed, "profile": recipe.profile, "parameters": n_params,
                        "world_size": ranks.world_size, **_environment(device)}
            atomic_write(run_dir / "run.json",
                         lambda tmp: tmp.write_text(json.dumps(run_info, indent=2), encoding="utf-8"))
            return run_dir

        run_dir = run_on_main(ranks, create_run_dir)
    else:
        run_dir = Path(resume)
        scheme.load_state_dict(last["scheme"])
        start_step, best_psnr = int(last["step"]), float(last.get("best_psnr", -float("inf")))
        per_rank = last.get("rng_ranks") or []
        restore_rng(per_rank[ranks.rank] if len(per_rank) == ranks.world_size else last["rng"])
        if int(last.get("world_size", 1)) != ranks.world_size:
            console.print(f"[yellow]Note:[/] the run was trained with {last.get('world_size', 1)} "
                          f"process(es), now {ranks.world_size}: it continues, but the batches differ "
                          "from an uninterrupted run's")
        if ranks.is_main:
            _truncate_metrics(run_dir / "metrics.jsonl", start_step)
    log = MetricsLog(run_dir / "metrics.jsonl") if ranks.is_main else None

    roi = config["data"]["patch_size"]
    overlap = float(train_cfg["val_overlap"])
    dims = data.spatial_dims
    limit = train_cfg["val_max_images"]
    context = config["data"].get("context_slices", 1)
    world = f"  ranks={ranks.world_size}" if ranks.distributed else ""
    console.print(
        f"[bold]toolbox run[/] {recipe.source} -> {run_dir}  device={device}{world}  "
        + "  ".join(f"{k}={v / 1e6:.2f}M params" for k, v in n_params.items())
    )

    def validate(**kwargs):
        return evaluate_held_out(generator, data.held_out, dims, roi, config["data"]["normalize"], overlap, device,
                                 parts.amp_dtype, context=context, **kwargs)

    if resume is None:
        if ranks.is_main:
            baseline = validate(limit=limit)
            log.write({"step": 0, "split": "val", "psnr_noisy": mean(baseline, "psnr_noisy"),
                       "ssim_noisy": mean(baseline, "ssim_noisy")})
        barrier()
    else:
        console.print(f"Resuming {run_dir} after step {start_step}")

    steps = int(train_cfg["steps"])
    batch_size = int(train_cfg["batch_size"])
    per_step = int(getattr(scheme, "batches_per_step", 1))
    if start_step >= steps:
        raise ToolboxError(f"{run_dir}: already trained {start_step} of {steps} steps; "
                           "raise train.steps to train on")
    indices = batch_indices(batch_size, start_step * per_step, steps * per_step, ranks)
    loader = _loader(data.train, batch_size, indices, int(train_cfg["num_workers"]), seed)
    running: dict[str, float] = {}
    started = time.time()

    def checkpoint(name: str, step: int, extra: dict | None = None) -> None:
        # Collective: every rank hands in its random state and a weight fingerprint.
        rng_ranks = gather_to_all(capture_rng())
        fingerprints = gather_to_all(_fingerprint(scheme.modules())) if ranks.distributed else []
        if any(f != fingerprints[0] for f in fingerprints):
            raise ToolboxError(f"step {step}: the ranks' weights differ ({fingerprints}); a scheme "
                               "must update every network on every rank")
        if not ranks.is_main:
            return
        payload = {
            "format": 1,
            "step": step,
            "recipe": config,
            "scheme": scheme.state_dict(),
            "generator": generator.state_dict(),
            "toolbox_version": __version__,
            "best_psnr": best_psnr,
            "rng": rng_ranks[0],
            "rng_ranks": rng_ranks,
            "world_size": ranks.world_size,
            **(extra or {}),
        }
        save_checkpoint(run_dir / "checkpoints" / f"{name}.pt", payload)

    progress = Progress(
        TextColumn("[bold blue]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[losses]}"),
        console=console, transient=False, disable=not ranks.is_main,
    )
    scheme.train(True)
    batches_iter = iter(loader)
    with progress:
        task = progress.add_task("train", total=steps, losses="", completed=start_step)
        for step in range(start_step + 1, steps + 1):
            batches = []
            for _ in range(per_step):
                batch = next(batches_iter)
                batches.append(parts.to_device(batch))
            try:
                terms = mean_over_ranks(scheme.train_step(batches, step))
            except RuntimeError as error:
                if "find_unused_parameters" in str(error):  # DDP: a parameter got no gradient
                    raise ToolboxError(
                        f"step {step}: a network has parameters this step did not use; set "
                        "train.find_unused_parameters: true for multi-process training") from error
                raise
            for key, value in terms.items():
                if not np.isfinite(value):
                    raise ToolboxError(
                        f"training diverged at step {step}: {key} = {value}; lower the learning "
                        "rate or check the data normalisation"
                    )
                running[key] = value if key not in running else 0.9 * running[key] + 0.1 * value
            if ranks.is_main and (step % train_cfg["log_every"] == 0 or step == steps):
                log.write({"step": step, "split": "train", **terms,
                           "seconds": round(time.time() - started, 2)})
                progress.update(task, losses=" ".join(f"{k}={v:.4g}" for k, v in running.items()))
            if step % train_cfg["val_every"] == 0 or step == steps:
                improved = None
                if ranks.is_main:
                    rows = validate(limit=limit)
                    psnr, ssim = mean(rows, "psnr"), mean(rows, "ssim")
                    log.write({"step": step, "split": "val", "psnr": psnr, "ssim": ssim})
                    improved = {"val_psnr": psnr, "val_ssim": ssim} if psnr > best_psnr else None
                improved = broadcast_from_main(improved)
                if improved is not None:
                    best_psnr = improved["val_psnr"]
                    checkpoint("best", step, improved)
                scheme.train(True)
            if step % train_cfg["checkpoint_every"] == 0 or step == steps:
                checkpoint("last", step)
            progress.advance(task)

    if not ranks.is_main:
        barrier()  # rank 0 writes the final report
        return run_dir, None
    try:
        report = _final_report(run_dir, config, data, generator, validate, started, console)
    finally:
        barrier()
    return run_dir, report


def _final_report(run_dir: Path, config: dict, data, generator, validate, started: float, console) -> dict:
    """Every held-out image with the best checkpoint: table, eval.json, figures, outputs."""
    from toolbox.checkpoint import load_checkpoint

    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    generator.load_state_dict(best["generator"])
    rows, outputs = validate(keep=True)
    written = write_held_out_outputs(run_dir, data.held_out, outputs, rows,
                                     f"{config.get('name') or 'model'} step {best['step']}")
    report = {
        "data_range": data.data_range_note,
        "units": "the images' own units, whole image, unclipped",
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
    return report


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
        title=f"Held-out images (PSNR dB / SSIM in the images' units over the whole image, {report['data_range']})"
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
