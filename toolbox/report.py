"""Scoring held-out images as ``toolbox denoise`` would, and the end-of-run report.

Validation during training and the final report share ``evaluate_held_out``: each image is
denoised through ``toolbox.infer.denoise_units`` and scored in its own units over the whole
image.  The report writes ``eval.json``, a figure per image and the noisy / denoised images.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolbox.checkpoint import atomic_write, generator_weights, load_checkpoint
from toolbox.figures import write_figure
from toolbox.infer import denoise_units
from toolbox.data.volumes import write_volume
from toolbox.metrics import psnr_ssim


@dataclass
class EvalRow:
    name: str
    psnr_noisy: float
    ssim_noisy: float
    psnr: float
    ssim: float
    data_range: float = 1.0


def evaluate_held_out(generator, held_out, spatial_dims, roi, norm_spec, overlap, device, amp_dtype=None,
                      limit: int = 0, keep: bool = False, context: int = 1, noise_level_map: bool = False):
    """PSNR/SSIM of noisy and denoised held-out images in their own units, each denoised as
    ``toolbox denoise`` would (a noise-conditional model with the level estimated from the
    image, as for a user who does not give one); ``keep`` also returns the outputs."""
    rows, outputs = [], []
    for item in held_out[: limit or None]:
        denoised = denoise_units(generator, spatial_dims, roi, norm_spec, item.noisy, item.slice_axis, device,
                                 overlap, autocast_dtype=amp_dtype, context=context,
                                 noise_level_map=noise_level_map)
        dims = item.clean.ndim - 1
        pn, sn = psnr_ssim(item.noisy, item.clean, dims, item.data_range)
        pd, sd = psnr_ssim(denoised, item.clean, dims, item.data_range)
        rows.append(EvalRow(item.name, pn, sn, pd, sd, item.data_range))
        if keep:
            outputs.append(denoised)
    return (rows, outputs) if keep else rows


def mean(rows, attr):
    return float(np.mean([getattr(r, attr) for r in rows])) if rows else float("nan")


def write_held_out_outputs(run_dir: Path, held_out, outputs, rows, description: str, formats) -> list[Path]:
    """Figures (noisy | denoised | clean) and the noisy / denoised images in the input's units."""
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
                                        f"{prefix} {description}"[:60], formats, overwrite=True))
    return written


def final_report(run_dir: Path, config: dict, data, generator, validate, started: float, console) -> dict:
    """Every held-out image with the best checkpoint: table, eval.json, figures, outputs."""
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    generator.load_state_dict(generator_weights(best))
    rows, outputs = validate(keep=True)
    written = write_held_out_outputs(run_dir, data.held_out, outputs, rows,
                                     f"{config.get('name') or 'model'} step {best['step']}", data.formats)
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
