"""``toolbox evaluate``: a trained model against classical baselines on clean/noisy pairs.

PSNR and SSIM are computed on the model's normalised scale (data range 1.0, stated in the
table with what it means in the input's units), per image and as a mean; a PNG figure per
case shows noisy | model | best baseline | clean, with a zoomed crop, because people judge
denoising by looking.
"""

from __future__ import annotations

import csv
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
    clean: np.ndarray  # normalised (C, *spatial)
    noisy: np.ndarray
    sigma: float  # noise level in normalised units (true or estimated)
    sigma_known: bool
    slice_axis: int | None


def _true_sigma(noise_spec: dict | None):
    if noise_spec and noise_spec.get("type") in ("gaussian", "awgn"):
        sigma = noise_spec.get("sigma", 0.1)
        if not isinstance(sigma, (list, tuple)):
            return float(sigma)
    return None


def build_cases(model, clean_paths, noisy_paths=None, noise_spec=None, seed: int = 12345) -> list[Case]:
    from toolbox.baselines import estimate_noise_sigma
    from toolbox.data.normalize import fit_normalizer
    from toolbox.data.volumes import expand_inputs, read_volume, squeeze_spatial
    from toolbox.plugins import get_registry

    clean_files = expand_inputs(clean_paths)
    norm_spec = model.recipe["data"]["normalize"]
    cases = []
    if noisy_paths:
        noisy_files = {p.name: p for p in expand_inputs(noisy_paths)}
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
        noise = get_registry().build("noise_models", noise_spec, "--noise", "noise")
    known = _true_sigma(noise_spec) if noise is not None else None
    for index, path in enumerate(clean_files):
        volume = read_volume(path, channels=model.channels)
        if noise is None:
            noisy_volume = read_volume(noisy_files[path.name], channels=model.channels)
            if noisy_volume.array.shape != volume.array.shape:
                raise ToolboxError(f"{noisy_files[path.name]}: shape {noisy_volume.array.shape[1:]} "
                                   f"differs from the clean {path} {volume.array.shape[1:]}")
            normalizer = fit_normalizer(norm_spec, noisy_volume.array)  # as at inference
            clean = normalizer.forward(volume.array)
            noisy = normalizer.forward(noisy_volume.array)
        else:
            normalizer = fit_normalizer(norm_spec, volume.array)
            clean = normalizer.forward(volume.array)
            generator = torch.Generator().manual_seed(seed + index)
            noisy = noise(torch.from_numpy(clean.astype(np.float32)), generator).numpy()
        clean, slice_axis = squeeze_spatial(clean.astype(np.float32), volume.slice_axis)
        noisy, _ = squeeze_spatial(noisy.astype(np.float32), volume.slice_axis)
        sigma = known if known is not None else estimate_noise_sigma(noisy)
        cases.append(Case(volume.name, clean, noisy, sigma, known is not None, slice_axis))
    return cases


def _metrics(result, clean, dims):
    from toolbox.metrics import psnr_ssim

    return psnr_ssim(torch.from_numpy(result), torch.from_numpy(clean), dims)


def evaluate(model_path: Path, clean_paths, noisy_paths=None, noise_spec=None, out_dir=None,
             device_name: str = "auto", seed: int = 12345, console=None) -> dict:
    from toolbox.baselines import available_baselines
    from toolbox.infer import denoise_normalised, load_trained_model
    from toolbox.distributed import pick_device
    from toolbox.train import make_console

    console = console or make_console()
    device = pick_device(device_name)
    model = load_trained_model(model_path, device)
    if out_dir is None:
        base = Path(model_path) if Path(model_path).is_dir() else Path(".")
        out_dir = base / f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ToolboxError(f"{out_dir}: exists and is not empty; pick another -o")
    cases = build_cases(model, clean_paths, noisy_paths, noise_spec, seed)
    norm = model.recipe["data"]["normalize"]
    scale = {"window": f"window {norm.get('low')}..{norm.get('high')}",
             "percentile": f"percentiles {norm.get('low') or 0.5}..{norm.get('high') or 99.5} of each image",
             "minmax": "min..max of each image", "none": "raw values"}[norm.get("type", "percentile")]
    rows, figures = [], []
    for case in cases:
        dims = case.clean.ndim - 1
        results = {}
        started = time.time()
        results[f"model ({model.name})"] = (denoise_normalised(model, case.noisy, case.slice_axis, device),
                                            time.time() - started)
        for name, method in available_baselines(dims).items():
            started = time.time()
            results[name] = (method(case.noisy, case.sigma), time.time() - started)
        scores = {}
        for name, (result, seconds) in results.items():
            psnr, ssim = _metrics(result, case.clean, dims)
            scores[name] = (psnr, ssim)
            rows.append({"image": case.name, "method": name, "psnr": psnr, "ssim": ssim,
                         "seconds": round(seconds, 3), "sigma": case.sigma,
                         "sigma_known": case.sigma_known})
        best_baseline = max((n for n in scores if not n.startswith(("model", "identity"))),
                            key=lambda n: scores[n][0])
        model_name = next(iter(results))
        figure = out_dir / "figures" / f"{case.name.split('.')[0]}.png"
        figures.append(figure)
        panels = [("noisy", case.noisy, scores["identity (noisy)"]),
                  ("model", results[model_name][0], scores[model_name]),
                  (best_baseline, results[best_baseline][0], scores[best_baseline]),
                  ("clean", case.clean, None)]
        write_figure(figure, panels, case.slice_axis)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    mean = {m: {"psnr": float(np.mean([r["psnr"] for r in rows if r["method"] == m])),
                "ssim": float(np.mean([r["ssim"] for r in rows if r["method"] == m]))} for m in methods}
    report = {"model": str(model.checkpoint), "data_range": 1.0, "intensity": scale,
              "noise": "paired files" if noisy_paths else (noise_spec or model.recipe["data"]["noise"]),
              "rows": rows, "mean": mean, "figures": [str(f) for f in figures]}
    atomic_write(out_dir / "report.json",
                 lambda tmp: tmp.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8"))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out_dir / "report.csv", lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8"))
    print_table(report, methods, console)
    console.print(f"wrote {out_dir / 'report.json'}, {out_dir / 'report.csv'} and {len(figures)} figure(s)")
    return report


def print_table(report: dict, methods: list[str], console) -> None:
    from rich.table import Table

    images = list(dict.fromkeys(r["image"] for r in report["rows"]))
    table = Table(title=f"PSNR dB / SSIM, data range {report['data_range']} = {report['intensity']}")
    table.add_column("method", no_wrap=True)
    for image in images:
        table.add_column(image, justify="right", no_wrap=True)
    table.add_column("mean", justify="right", no_wrap=True)
    by = {(r["image"], r["method"]): r for r in report["rows"]}
    best = max(report["mean"], key=lambda m: report["mean"][m]["psnr"])
    for method in methods:
        cells = [f"{by[(i, method)]['psnr']:.2f} / {by[(i, method)]['ssim']:.3f}" for i in images]
        mean = report["mean"][method]
        style = "bold green" if method == best else None
        table.add_row(method, *cells, f"{mean['psnr']:.2f} / {mean['ssim']:.3f}", style=style)
    console.print(table)


def _middle_slice(array: np.ndarray, slice_axis):
    image = array[0]
    if image.ndim == 3:
        axis = slice_axis if slice_axis is not None else 0
        image = np.take(image, image.shape[axis] // 2, axis=axis)
    return image


def write_figure(path: Path, panels, slice_axis) -> None:
    """A row of full views and a row of 3x-zoomed centre crops, labelled with PSNR/SSIM."""
    from PIL import Image, ImageDraw

    views = [np.clip(_middle_slice(p[1], slice_axis), 0, 1) for p in panels]
    h, w = views[0].shape
    scale = max(1, 256 // max(h, w))  # small images are enlarged so labels fit
    width, height = w * scale, h * scale
    crop = max(4, min(h, w) // 3)  # a square centre crop, shown panel-wide
    top, left = (h - crop) // 2, (w - crop) // 2
    label = 16
    canvas = Image.new("L", (len(views) * width, height + width + 2 * label), 0)
    draw = ImageDraw.Draw(canvas)
    for index, ((title, _, score), view) in enumerate(zip(panels, views)):
        full = Image.fromarray((view * 255).astype(np.uint8)).resize((width, height), Image.NEAREST)
        zoom = Image.fromarray((view[top:top + crop, left:left + crop] * 255).astype(np.uint8))
        zoom = zoom.resize((width, width), Image.NEAREST)
        x = index * width
        canvas.paste(full, (x, label))
        canvas.paste(zoom, (x, 2 * label + height))
        text = title if score is None else f"{title} {score[0]:.2f} dB / {score[1]:.3f}"
        draw.text((x + 3, 2), text[:48], fill=255)
        draw.text((x + 3, label + height + 2), "centre crop", fill=255)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))
