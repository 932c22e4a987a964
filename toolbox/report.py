"""Scoring held-out images as ``toolbox denoise`` would, and the end-of-run report.

Validation during training and the final report share ``evaluate_held_out``: each image is
denoised through ``toolbox.infer.denoise_units`` and scored in its own units over the whole
image.  The report writes ``eval.json``, a figure per image and the noisy / denoised images,
and scores the strongest classical denoiser at hand on the same noisy images (BM3D / BM4D
when installed, else non-local means), so the table says whether the model is worth using.
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
from toolbox.resolution import upsample


@dataclass
class EvalRow:
    name: str
    psnr_noisy: float
    ssim_noisy: float
    psnr: float
    ssim: float
    data_range: float = 1.0


def evaluate_held_out(generator, held_out, spatial_dims, roi, norm_spec, overlap, device, amp_dtype=None,
                      limit: int = 0, keep: bool = False, context: int = 1, noise_level_map: bool = False,
                      noise_spec=None):
    """PSNR/SSIM of noisy and denoised held-out images in their own units, each denoised as
    ``toolbox denoise`` would (a noise-conditional model with the level estimated from the
    image, as for a user who does not give one); ``keep`` also returns the outputs."""
    rows, outputs = [], []
    for item in held_out[: limit or None]:
        denoised = denoise_units(generator, spatial_dims, roi, norm_spec, item.noisy, item.slice_axis, device,
                                 overlap, autocast_dtype=amp_dtype, context=context,
                                 noise_level_map=noise_level_map, noise_spec=noise_spec)
        dims = item.clean.ndim - 1
        pn, sn = psnr_ssim(item.noisy_on_clean_grid(), item.clean, dims, item.data_range)
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
        noisy_label = "noisy" if item.scale == 1 else f"noisy, cubic x{item.scale}"
        write_figure(figure, [(noisy_label, item.noisy_on_clean_grid(), (row.psnr_noisy, row.ssim_noisy)),
                              ("denoised", denoised, (row.psnr, row.ssim)),
                              ("clean", item.clean, None)], item.slice_axis, item.display)
        written.append(figure)
        if item.volume is None:  # read through a MONAI reader: no template to write back
            continue
        template = item.volume
        if template.format == "nifti":  # float32, so that the files hold what was scored
            template = dataclasses.replace(template, stored_dtype=np.dtype(np.float32),
                                           value_range=(-np.inf, np.inf))
        kept = [s for s in template.array.shape[1:] if s > 1]
        if kept != [s for s in item.clean.shape[1:] if s > 1]:
            continue  # the clean image was cropped (to whole blocks for super-resolution): no template
        for prefix, units in (("noisy", item.noisy), ("denoised", denoised)):
            # Back to the file's axes (singletons kept); a low-resolution input gets a coarser grid.
            sizes = iter(units.shape[1:])
            shape = (units.shape[0],) + tuple(1 if s == 1 else next(sizes) for s in template.array.shape[1:])
            written.append(write_volume(template, units.reshape(shape),
                                        run_dir / "held_out" / f"{prefix}_{item.name}",
                                        f"{prefix} {description}"[:60], formats, overwrite=True))
    return written


def classical_reference(spatial_dims: int) -> tuple[str, object]:
    """The strongest classical denoiser available: BM3D / BM4D if installed, else NLM."""
    from toolbox.baselines import available_baselines

    methods = available_baselines(spatial_dims)
    name = next(n for n in ("BM3D", "BM4D", "non-local means") if n in methods)
    return name, methods[name]


def score_reference(held_out, norm_spec: dict, spatial_dims: int) -> list[dict]:
    """The classical reference on each held-out noisy image, given its true noise SD (the RMS
    of noisy - clean: exact for synthetic noise), scored as the model is."""
    from toolbox.evaluation import run_baseline
    from toolbox.noise_level import rms_difference

    name, method = classical_reference(spatial_dims)
    scores = []
    for item in held_out:
        sigma = item.true_sigma if item.true_sigma is not None else rms_difference(item.noisy, item.clean)
        # A 2D method on a 3D held-out volume goes plane by plane, as a 2D model does.
        if spatial_dims == 2 and item.clean.ndim == 4:
            axis = 1 + (item.slice_axis or 0)
            planes = [run_baseline(method, norm_spec, np.take(item.noisy, i, axis=axis), sigma)
                      for i in range(item.noisy.shape[axis])]
            result = np.stack(planes, axis=axis)
        else:
            result = run_baseline(method, norm_spec, item.noisy, sigma)
        result = upsample(result, item.clean.shape[1:])  # super-resolution: then interpolated
        psnr, ssim = psnr_ssim(result, item.clean, item.clean.ndim - 1, item.data_range)
        scores.append({"method": name, "psnr": psnr, "ssim": ssim, "sigma": sigma})
    return scores


def final_report(run_dir: Path, config: dict, data, generator, validate, started: float, console) -> dict:
    """Every held-out image with the best checkpoint: table, eval.json, figures, outputs."""
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    generator.load_state_dict(generator_weights(best))
    rows, outputs = validate(keep=True)
    reference = score_reference(data.held_out, config["data"]["normalize"], data.spatial_dims)
    written = write_held_out_outputs(run_dir, data.held_out, outputs, rows,
                                     f"{config.get('name') or 'model'} step {best['step']}", data.formats)
    report = {
        "data_range": data.data_range_note,
        "units": "the images' own units, whole image, unclipped",
        "best_step": best["step"],
        "scale": data.held_out[0].scale if data.held_out else 1,
        "images": [{**r.__dict__, "reference": ref} for r, ref in zip(rows, reference)],
        "mean": {k: mean(rows, k) for k in ("psnr_noisy", "ssim_noisy", "psnr", "ssim")},
        "reference": {"method": reference[0]["method"] if reference else None,
                      "psnr": float(np.mean([r["psnr"] for r in reference])) if reference else None,
                      "ssim": float(np.mean([r["ssim"] for r in reference])) if reference else None,
                      "note": "given the true noise SD (RMS of noisy - clean)"
                              + ("; then interpolated to the output grid (cubic)" if data.held_out
                                 and data.held_out[0].scale > 1 else "")},
        "seconds": round(time.time() - started, 1),
        "outputs": [str(p) for p in written],
    }
    atomic_write(run_dir / "eval.json",
                 lambda tmp: tmp.write_text(json.dumps(report, indent=2), encoding="utf-8"))
    print_report(report, console)
    console.print(f"Figures in {run_dir / 'figures'}; noisy and denoised held-out images in "
                  f"{run_dir / 'held_out'}")
    return report


SHORT_NAMES = {"non-local means": "NLM"}  # table headers


def print_report(report: dict, console) -> None:
    from rich.table import Table

    table = Table(title="Held-out images: PSNR dB / SSIM in the images' units over the whole image "
                        f"({report['data_range']})")
    ref = report.get("reference") or {}
    ref_name = SHORT_NAMES.get(ref.get("method"), ref.get("method"))
    scale = int(report.get("scale", 1))
    noisy = "noisy" if scale == 1 else f"noisy, cubic x{scale}"
    if ref_name and scale > 1:  # super-resolution: the classical method at the input's size, then cubic
        ref_name = f"{ref_name} + cubic x{scale}"
    columns = ["image", noisy, "denoised" if scale == 1 else f"model x{scale}"] + ([ref_name] if ref_name else [])
    columns += ["gain dB"]
    columns += [f"vs {ref_name} dB"] if ref_name else []
    for column in columns:
        table.add_column(column, justify="left" if column == "image" else "right", no_wrap=True)

    def cells(name, psnr_noisy, psnr, ssim_noisy, ssim, reference):
        row = [name, f"{psnr_noisy:.2f} / {ssim_noisy:.3f}", f"{psnr:.2f} / {ssim:.3f}"]
        if ref_name:
            row.append(f"{reference['psnr']:.2f} / {reference['ssim']:.3f}")
        row.append(f"{psnr - psnr_noisy:+.2f}")
        if ref_name:
            row.append(f"{psnr - reference['psnr']:+.2f}")
        return row

    for r in report["images"]:
        table.add_row(*cells(r["name"], r["psnr_noisy"], r["psnr"], r["ssim_noisy"], r["ssim"], r.get("reference")))
    m = report["mean"]
    table.add_row(*cells("[bold]mean", m["psnr_noisy"], m["psnr"], m["ssim_noisy"], m["ssim"], ref))
    console.print(table)
    if ref_name:
        console.print(f"{ref_name} = {ref['method']}, the strongest classical denoiser installed, given the true "
                      "noise SD (BM3D / BM4D appear when the non-commercial bm3d / bm4d packages are installed)")

