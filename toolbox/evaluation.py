"""``toolbox evaluate``: a trained model against classical baselines on clean/noisy pairs.

Every method gets the noisy image in its own units and hands back an image in those units,
through the same normalisation as ``toolbox denoise`` (fitted to the noisy image); PSNR and
SSIM are computed in those units over the whole image, unclipped, with the data range
stated (the window's width for CT, else each clean image's max - min).  A PNG figure per
case shows noisy | model | best baseline | clean, with a zoomed crop, because people judge
denoising by looking.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from toolbox.checkpoint import atomic_write
from toolbox.errors import ToolboxError


@dataclass
class Case:
    name: str
    clean: np.ndarray  # (C, *spatial) in the image's own units
    noisy: np.ndarray
    sigma: float  # Gaussian noise level in those units (true or estimated)
    sigma_known: bool
    slice_axis: int | None
    data_range: float
    photons: tuple[float, float] | None = None  # known Poisson(-Gaussian) noise: (peak, read SD)
    reference: object = None  # the normaliser the synthetic noise was added in
    rician: bool = False  # the noise is Rician of known SD (``sigma``)


def _true_sigma(noise_spec: dict | None):
    """The noise SD (normalised units) of Gaussian or Rician noise of one level, else None."""
    if noise_spec and noise_spec.get("type") in ("gaussian", "awgn", "rician"):
        sigma = noise_spec.get("sigma", 0.1)
        if not isinstance(sigma, (list, tuple)):
            return float(sigma)
    return None


def build_cases(model, clean_paths, registry, noisy_paths=None, noise_spec=None, seed: int = 12345) -> list[Case]:
    """Clean/noisy pairs in the images' own units: real noisy files, or synthetic noise whose
    level is in normalised units (as in the recipe: added to the normalised clean image)."""
    from toolbox.baselines import estimate_noise_sigma
    from toolbox.data.datasets import degradation_noise_sd, noisy_in_units, scaled_axes_crop, scaled_shape
    from toolbox.data.normalize import data_range, fit_normalizer
    from toolbox.data.volumes import expand_inputs, formats_of, read_volume, squeeze_spatial
    formats = formats_of(registry)
    clean_files = expand_inputs(clean_paths, formats)
    norm_spec = model.recipe["data"]["normalize"]
    cases = []
    if noisy_paths:
        noisy_files = {p.name: p for p in expand_inputs(noisy_paths, formats)}
        missing = [p.name for p in clean_files if p.name not in noisy_files]
        if missing:
            raise ToolboxError(f"no noisy image named like the clean {', '.join(missing[:3])} "
                               "(pairs match by file name)")
        noise = None
    else:
        noise_spec = noise_spec or model.recipe["data"].get("noise")
        if not noise_spec:
            raise ToolboxError("give --noisy FOLDER, or --noise for synthetic noise "
                               "(the model's recipe has no noise model)")
        noise = registry.build("noise_models", noise_spec, "--noise", "noise")
    known = _true_sigma(noise_spec) if noise is not None else None
    photons = noise.photons() if hasattr(noise, "photons") else None
    scale = model.scale
    for index, path in enumerate(clean_files):
        volume = read_volume(path, formats, channels=model.channels)
        clean = volume.image_values()  # padding outside the field of view is not image
        if scale > 1 and noise is not None:  # the degradation bins whole blocks: crop to them
            clean = clean[(slice(None),) + scaled_axes_crop(clean.shape[1:], scale, model.spatial_dims,
                                                            volume.slice_axis)]
        reference = fit_normalizer(norm_spec, clean)
        sigma_known = known is not None
        if noise is None:
            noisy_volume = read_volume(noisy_files[path.name], formats, channels=model.channels)
            expected = scaled_shape(noisy_volume.array.shape[1:], scale, model.spatial_dims, noisy_volume.slice_axis)
            if expected != tuple(clean.shape[1:]):
                wanted = "the same shape" if scale == 1 else f"{scale}x its shape ({'x'.join(map(str, expected))})"
                raise ToolboxError(f"{noisy_files[path.name]}: shape {noisy_volume.array.shape[1:]}; the clean "
                                   f"{path} is {clean.shape[1:]}, expected {wanted}")
            noisy = noisy_volume.array
        else:
            noisy = noisy_in_units(noise, clean, reference, torch.Generator().manual_seed(seed + index),
                                   volume.spacing, volume.slice_axis, where=path)
        true_sd = degradation_noise_sd(noise, clean, noisy, reference, seed + index) if noise is not None else None
        clean, slice_axis = squeeze_spatial(clean.astype(np.float32), volume.slice_axis)
        noisy, _ = squeeze_spatial(noisy.astype(np.float32), volume.slice_axis)
        if true_sd is not None:
            sigma, sigma_known = true_sd, True
        else:
            sigma = known * reference.scale if known is not None else estimate_noise_sigma(noisy)
        cases.append(Case(volume.name, clean, noisy, sigma, sigma_known, slice_axis,
                          data_range(norm_spec, clean), photons,
                          reference, rician=sigma_known and noise_spec.get("type") == "rician"))
    return cases


def run_baseline(method, norm_spec: dict, noisy: np.ndarray, sigma: float) -> np.ndarray:
    """A classical denoiser on the same footing as the model: normalised like the model's
    input (fitted to the noisy image), sigma converted, result back in the image's units
    (raised to the normaliser's ``floor`` as the model's is; the identity is left noisy)."""
    from toolbox.baselines import identity
    from toolbox.data.normalize import fit_normalizer

    normalizer = fit_normalizer(norm_spec, noisy)
    result = method(normalizer.forward(noisy).astype(np.float32), sigma / normalizer.scale)
    back = normalizer.inverse if method is identity else normalizer.denoised
    return back(result).astype(np.float32)


def evaluate(model_path: Path, clean_paths, registry, noisy_paths=None, noise_spec=None, out_dir=None,
             device_name: str = "auto", seed: int = 12345, console=None, ensemble: int = 1,
             true_sigma: bool = False, inversion: dict | None = None, window: str | None = None,
             amp: bool = False, adapt: int = 0) -> dict:
    """The model at ``model_path`` (a run folder or checkpoint) against the classical
    baselines on ``clean_paths``; writes report.json, report.csv and figures.  ``ensemble``
    > 1 adds a row for the model with that test-time self-ensemble; ``true_sigma`` one for a
    noise-conditional model given the true noise level; ``adapt`` > 0 one for the model
    adapted to each image over that many steps (``toolbox.adaptation``)."""
    from toolbox.console import make_console
    from toolbox.data.normalize import describe_range
    from toolbox.distributed import pick_device
    from toolbox.infer import check_options, load_trained_model

    console = console or make_console()
    device = pick_device(device_name)
    model = load_trained_model(model_path, device, registry, inversion)
    check_options(model, ensemble=ensemble, true_sigma=true_sigma, adapt=adapt)
    model = check_options(model, window=window, amp=amp)  # every row denoises with these
    if out_dir is None:
        base = Path(model_path) if Path(model_path).is_dir() else Path(".")
        out_dir = base / f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ToolboxError(f"{out_dir}: exists and is not empty; pick another -o")
    cases = build_cases(model, clean_paths, registry, noisy_paths, noise_spec, seed)
    rows, figures = [], []
    for case in cases:
        case_rows, figure = _score_case(model, case, device, out_dir, ensemble, true_sigma, adapt)
        for row in case_rows:
            if "adaptation_kept" in row:
                console.print(f"{case.name}, {row['method']}: " + (
                    f"not adapted: {row['adaptation_declined']}" if row["adaptation_declined"] else
                    f"SURE estimates {row['adaptation_estimated_db']:+.2f} dB, gains kept on "
                    f"{row['adaptation_kept']} of 2 halves"))
        rows += case_rows
        figures.append(figure)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    mean = {m: {k: float(np.mean([r[k] for r in rows if r["method"] == m])) for k in ("psnr", "ssim", "hf_power")}
            for m in methods}
    report = {"model": str(model.checkpoint), "data_range": describe_range(model.recipe["data"]["normalize"]),
              "units": "the images' own units, whole image, unclipped",
              "noise": "paired files" if noisy_paths else (noise_spec or model.recipe["data"]["noise"]),
              "rows": rows, "mean": mean, "figures": [str(f) for f in figures]}
    write_reports(out_dir, report)
    print_table(report, methods, console)
    console.print(f"wrote {out_dir / 'report.json'}, {out_dir / 'report.csv'} and {len(figures)} figure(s)")
    return report


def _score_case(model, case: Case, device, out_dir: Path, ensemble: int = 1,
                true_sigma: bool = False, adapt: int = 0) -> tuple[list[dict], Path]:
    """The model (and with a self-ensemble of ``ensemble``, if > 1) and every available
    baseline on one case: a row each, and a figure of noisy | model | best baseline | clean.
    A noise-conditional model is given the level it estimates from the image, as a user's
    would be without --sigma (the baselines get the true level where it is known); with
    ``true_sigma`` also, in a row of its own, the RMS of noisy - clean; with ``adapt``, a row
    for the model adapted to the case first (and one adapted and self-ensembled), each with
    the adaptation's own estimate and verdict."""
    from toolbox.baselines import anscombe_bm3d_or_bm4d, available_baselines, optional_name, rician_bm3d_or_bm4d
    from toolbox.noise_level import rms_difference
    from toolbox.data.normalize import fit_normalizer
    from toolbox.figures import write_figure
    from toolbox.infer import denoise_with_model
    from toolbox.metrics import psnr_ssim
    from toolbox.resolution import upsample
    from toolbox.texture import high_frequency_ratio

    norm = model.recipe["data"]["normalize"]
    dims = case.clean.ndim - 1
    model_name = f"model ({model.name})"
    methods = {model_name: lambda: denoise_with_model(model, case.noisy, case.slice_axis, device)}
    if true_sigma:
        told = dataclasses.replace(model, sigma=rms_difference(case.noisy, case.clean))
        methods[f"model, true sigma ({model.name})"] = lambda: denoise_with_model(told, case.noisy, case.slice_axis,
                                                                               device)
    if ensemble > 1:
        ensembled = dataclasses.replace(model, ensemble=ensemble)
        methods[f"model x{ensemble} ({model.name})"] = lambda: denoise_with_model(ensembled, case.noisy,
                                                                               case.slice_axis, device)
    adaptations = {}
    for count in sorted({1, ensemble}) if adapt else ():  # adapted, and adapted with the self-ensemble
        adapted = dataclasses.replace(model, adapt=adapt, ensemble=count)
        name = f"model adapted {adapt}{f' x{count}' if count > 1 else ''} ({model.name})"
        methods[name] = lambda adapted=adapted, name=name: denoise_with_model(
            adapted, case.noisy, case.slice_axis, device, on_adapted=lambda done: adaptations.update({name: done}))
    # Super-resolution: the classical methods work at the input's size, then cubic
    # interpolation brings them to the output grid ("identity" is plain interpolation).
    scale = case.clean.shape[-1] // case.noisy.shape[-1]
    then = f" + cubic x{scale}" if scale > 1 else ""
    identity = "identity (noisy)" if scale == 1 else f"cubic x{scale} (noisy)"
    for name, method in available_baselines(dims).items():
        name = identity if name == "identity (noisy)" else name + then
        methods[name] = lambda method=method: run_baseline(method, norm, case.noisy, case.sigma)
    vst, rician = optional_name(dims, "Anscombe"), optional_name(dims, "Rician inverse")
    if rician and case.rician:  # in the units the noise was added in, where 0 is the magnitude's 0
        methods[rician + then] = lambda: case.reference.denoised(rician_bm3d_or_bm4d(
            case.reference.forward(case.noisy), case.sigma / case.reference.scale)).astype(np.float32)
    if vst and case.photons:  # given the true photon count and read noise, in the units they were added in
        methods[vst + then] = lambda: case.reference.denoised(
            anscombe_bm3d_or_bm4d(case.reference.forward(case.noisy), *case.photons)).astype(np.float32)
    results, scores, rows = {}, {}, []
    for name, run in methods.items():
        started = time.time()
        results[name] = upsample(run(), case.clean.shape[1:])
        seconds = time.time() - started
        scores[name] = psnr_ssim(results[name], case.clean, dims, case.data_range)
        rows.append({"image": case.name, "method": name, "psnr": scores[name][0], "ssim": scores[name][1],
                     "hf_power": high_frequency_ratio(results[name], case.clean, case.slice_axis),
                     "seconds": round(seconds, 3), "sigma": case.sigma,
                     "sigma_known": case.sigma_known, "data_range": case.data_range})
        if name in adaptations:  # SURE's estimate of what the tuning gained, and the verdict
            rows[-1].update(adaptation_estimated_db=round(adaptations[name].estimated_db, 3),
                            adaptation_kept=adaptations[name].kept,
                            adaptation_declined=adaptations[name].declined)
    best_baseline = max((n for n in scores if not n.startswith("model") and n != identity), key=lambda n: scores[n][0])
    figure = out_dir / "figures" / f"{case.name.split('.')[0]}.png"
    panels = [("noisy" if scale == 1 else identity, results[identity], scores[identity]),
              ("model", results[model_name], scores[model_name]),
              (best_baseline, results[best_baseline], scores[best_baseline]),
              ("clean", case.clean, None)]
    write_figure(figure, panels, case.slice_axis, fit_normalizer(norm, case.clean))
    write_spectra(out_dir / "spectra" / f"{case.name.split('.')[0]}.png", case,
                  {"noisy": results[identity], "model": results[model_name], best_baseline: results[best_baseline]})
    return rows, figure


def write_spectra(path: Path, case: Case, images: dict) -> None:
    """The radially averaged power spectra (log10) of the clean image and of ``images``."""
    from toolbox.figures import write_line_plot
    from toolbox.texture import radial_spectrum

    centres, clean = radial_spectrum(case.clean, case.slice_axis)
    series = {"clean": clean, **{name: radial_spectrum(image, case.slice_axis)[1] for name, image in images.items()}}
    floor = max(float(np.max(clean)) * 1e-12, 1e-30)
    write_line_plot(path, [round(float(c), 4) for c in centres][1::2],
                    {name: list(np.log10(np.maximum(power, floor))[1::2]) for name, power in series.items()},
                    f"{case.name}: radially averaged power spectrum", "cycles / pixel", "log10 power",
                    log_x=False)


def write_reports(out_dir: Path, report: dict, stem: str = "report") -> None:
    """``STEM.json`` (the whole report) and ``STEM.csv`` (its rows), written atomically."""
    atomic_write(out_dir / f"{stem}.json",
                 lambda tmp: tmp.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8"))
    buffer = io.StringIO()
    fields = list(dict.fromkeys(key for row in report["rows"] for key in row))  # some rows have more
    writer = csv.DictWriter(buffer, fieldnames=fields, restval="")
    writer.writeheader()
    writer.writerows(report["rows"])
    atomic_write(out_dir / f"{stem}.csv", lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8"))


def print_table(report: dict, methods: list[str], console) -> None:
    from rich.table import Table

    images = list(dict.fromkeys(r["image"] for r in report["rows"]))
    table = Table(title=f"PSNR dB / SSIM in the images' units, whole image, {report['data_range']}")
    table.add_column("method", no_wrap=True)
    for image in images:
        table.add_column(image, justify="right", no_wrap=True)
    table.add_column("mean", justify="right", no_wrap=True)
    table.add_column("HF power", justify="right", no_wrap=True)
    by = {(r["image"], r["method"]): r for r in report["rows"]}
    best = max(report["mean"], key=lambda m: report["mean"][m]["psnr"])
    for method in methods:
        cells = [f"{by[(i, method)]['psnr']:.2f} / {by[(i, method)]['ssim']:.3f}" for i in images]
        mean = report["mean"][method]
        style = "bold green" if method == best else None
        table.add_row(method, *cells, f"{mean['psnr']:.2f} / {mean['ssim']:.3f}", f"{mean['hf_power']:.3g}",
                      style=style)
    console.print(table)
    console.print("HF power: power over 0.25..0.5 cycles/pixel relative to the clean image's (1 = its "
                  "texture, < 1 = blur, > 1 = noise left or invented); spectra in spectra/")
