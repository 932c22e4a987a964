"""Seed 001's Figure 13 on the bundled held-out micrographs: PSNR across noise types and levels.

Every held-out simulated micrograph (``samples/em/test``, intensities relative to the beam)
is degraded at each level of two noise models, in the images' own units:

- Poisson at a dose of D counts per pixel of vacuum (intensity 1): ``Poisson(D x) / D``;
- additive Gaussian noise of SD s (in units of the vacuum intensity),

and denoised by: the noisy image itself; non-local means and BM3D (given the true noise SD,
the RMS of noisy - clean; BM3D only where the non-commercial ``bm3d`` package is installed;
for Poisson also BM3D after the Anscombe transform, as BM3D is meant to be used there); a
supervised U-Net trained at one level (``--single``, the seed's baseline, trained at its
strongest Poisson level); the toolbox's best fidelity model (``--blind``, a U-Net trained
across the whole range); and the latent search of a DCGAN (``--dcgan``, the recipe's
search budget, squared error: no noise model): its image G(z) alone (the seed's output),
and with the residual shrunk back in (``residual: shrink``, noise SD estimated from each
image); at the Poisson levels also the search with the Poisson likelihood at the true dose
(shrink with the variance the counts give).  PSNR over the whole image with the clean image's
max - min as the data range; seconds per image for each method (one process, this machine).

Writes a Markdown table (stdout and OUT/table.md), OUT/results.csv, and two plots
(OUT/psnr_poisson.png, OUT/psnr_gaussian.png); plus a figure of one image at every level.

    python benchmarks/latent_inversion_em.py --dcgan runs/dcgan_em --single runs/unet_em_single \\
        --blind runs/unet_em --out bench/em
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import time
from pathlib import Path

import numpy as np

POISSON_DOSES = (8, 32, 128, 512)
GAUSSIAN_SDS = (0.025, 0.05, 0.1, 0.2)


def noisy_copy(clean: np.ndarray, kind: str, level: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "poisson":
        return (rng.poisson(np.clip(clean, 0, None) * level) / level).astype(np.float32)
    return (clean + level * rng.standard_normal(clean.shape)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--dcgan", required=True, help="run folder of recipes/dcgan_em.yaml")
    parser.add_argument("--single", help="run folder of a supervised model trained at one level")
    parser.add_argument("--blind", help="run folder of the supervised model trained across levels")
    parser.add_argument("--images", default=str(root / "samples" / "em" / "test"))
    parser.add_argument("--limit", type=int, default=0, help="first N images only (0 = all)")
    parser.add_argument("--doses", nargs="+", type=float, default=POISSON_DOSES)
    parser.add_argument("--sds", nargs="+", type=float, default=GAUSSIAN_SDS)
    parser.add_argument("--inversion", default=None, help="YAML mapping replacing the recipe's search settings")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch
    import yaml

    import toolbox

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = sorted(Path(args.images).glob("*.tif"))[: args.limit or None]
    cleans = [toolbox.read_volume(p).image_values().astype(np.float32) for p in paths]
    search = yaml.safe_load(args.inversion) if args.inversion else {}
    dcgan = toolbox.load_model(args.dcgan, inversion={**search, "residual": "none"})
    models = {"DCGAN G(z) (seed)": dcgan,
              "DCGAN + shrink": toolbox.load_model(args.dcgan, inversion={**search, "residual": "shrink"})}
    if args.single:
        models["supervised, one level"] = toolbox.load_model(args.single)
    if args.blind:
        models["supervised, all levels"] = toolbox.load_model(args.blind)
    norm = dcgan.recipe["data"]["normalize"]
    bm3d = toolbox.classical_baseline
    has_bm3d = importlib.util.find_spec("bm3d") is not None  # non-commercial: benchmark environment only
    device = torch.device("cpu")
    conditions = [("poisson", d) for d in args.doses] + [("gaussian", s) for s in args.sds]
    rows, seconds = [], {}

    def timed(name, function):
        started = time.perf_counter()
        result = function()
        seconds.setdefault(name, []).append(time.perf_counter() - started)
        return result

    examples = {}
    for kind, level in conditions:
        label = f"Poisson {level:g}" if kind == "poisson" else f"Gaussian {level:g}"
        print(f"{label} ...", flush=True)
        if kind == "poisson":  # the search told the true dose
            poisson = toolbox.load_model(args.dcgan, inversion={**search, "loss": "poisson", "residual": "shrink",
                                                                 "counts_per_unit": float(level)})
        for index, (path, clean) in enumerate(zip(paths, cleans)):
            noisy = noisy_copy(clean, kind, level, seed=1000 * index + int(level * 1000))
            sigma = float(np.sqrt(np.mean((noisy - clean) ** 2)))
            outputs = {"noisy": noisy,
                       "NLM": timed("NLM", lambda: toolbox.run_baseline(toolbox.non_local_means, norm, noisy, sigma))}
            if has_bm3d:
                outputs["BM3D"] = timed("BM3D", lambda: toolbox.run_baseline(bm3d, norm, noisy, sigma))
                if kind == "poisson":
                    outputs["Anscombe + BM3D"] = timed(
                        "Anscombe + BM3D", lambda: toolbox.anscombe_baseline(noisy, float(level)))
            for name, model in models.items():
                outputs[name] = timed(name, lambda: toolbox.denoise_with_model(model, noisy, None, device))
            if kind == "poisson":
                outputs["DCGAN + shrink, Poisson"] = timed(
                    "DCGAN + shrink, Poisson", lambda: toolbox.denoise_with_model(poisson, noisy, None, device))
            extent = float(clean.max() - clean.min())
            for name, image in outputs.items():
                psnr, ssim = toolbox.psnr_ssim(image, clean, 2, extent)
                rows.append({"noise": kind, "level": level, "image": path.name, "method": name,
                             "psnr": psnr, "ssim": ssim})
            if index == 0:
                examples[label] = outputs
    methods = list(dict.fromkeys(r["method"] for r in rows))
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    def mean(kind, level, method, key="psnr"):
        values = [r[key] for r in rows if (r["noise"], r["level"], r["method"]) == (kind, level, method)]
        return float(np.mean(values)) if values else None

    lines = [f"Mean PSNR dB / SSIM over {len(paths)} held-out micrographs ({paths[0].parent}); Poisson: counts "
             "per vacuum pixel, Gaussian: SD in units of the vacuum intensity.", ""]
    header = ["noise"] + methods
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for kind, level in conditions:
        cells = [f"{'Poisson' if kind == 'poisson' else 'Gaussian'} {level:g}"]
        for method in methods:
            psnr = mean(kind, level, method)
            cells.append("-" if psnr is None else f"{psnr:.2f} / {mean(kind, level, method, 'ssim'):.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    for method in methods:
        band = [mean(k, lv, method) for k, lv in conditions if mean(k, lv, method) is not None]
        if method != "noisy":
            lines.append(f"\n{method}: PSNR band {min(band):.2f}..{max(band):.2f} dB (spread {max(band) - min(band):.2f})"
                         + (f"; {np.mean(seconds[method]):.2f} s per image" if method in seconds else ""))
    table = "\n".join(lines)
    print(table)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    for kind, levels, unit in (("poisson", args.doses, "dose (counts per vacuum pixel)"),
                               ("gaussian", args.sds, "noise SD (vacuum intensity = 1)")):
        series = {m: [mean(kind, lv, m) for lv in levels] for m in methods if mean(kind, levels[0], m) is not None}
        toolbox.write_line_plot(out / f"psnr_{kind}.png", list(levels), series,
                                f"Held-out micrographs, {kind} noise", unit, "PSNR (dB)")
    for label, outputs in examples.items():
        panels = list(outputs.values())
        toolbox.write_grid(out / f"example_{label.replace(' ', '_')}.png", np.stack(panels) / 2.0,
                           columns=len(panels))
    print(f"\nmethods per example figure (left to right): {', '.join(next(iter(examples.values())))}")


if __name__ == "__main__":
    main()
