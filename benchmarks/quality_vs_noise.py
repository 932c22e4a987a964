"""Quality of one trained model across noise levels, against the classical baselines.

Runs ``toolbox evaluate`` (``toolbox.evaluate``) once per sigma with synthetic
Gaussian (or ``--noise-type rician``) noise (normalised units, fixed seed) on held-out clean images, and prints one
Markdown table: mean PSNR / SSIM per method and sigma, and the model's margin over BM3D
(2D) / BM4D (3D) given the true sigma, and the best model row (plain, x N self-ensemble,
adapted: ``--ensemble``, ``--adapt``) against the +1.5 dB target.  A model trained for
one sigma is thus also seen away from it (as the EM paper evaluates).

BM3D / BM4D appear only where installed (see versus_bm3d_bm4d.py: benchmark environment
only).  Each evaluation's report.json and figures go to ``--out/sigma_<value>/``.

    python benchmarks/quality_vs_noise.py RUN_DIR samples/ct/test --sigmas 0.05 0.1 0.2 0.3 --out bench/ct
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="run folder or checkpoint")
    parser.add_argument("data", nargs="+", help="held-out clean images or folders")
    parser.add_argument("--sigmas", nargs="+", type=float, required=True)
    parser.add_argument("--noise-type", default="gaussian", choices=["gaussian", "rician"],
                        help="the noise model the sigmas are for (rician: magnitude MR)")
    parser.add_argument("--out", required=True, help="folder for the per-sigma reports")
    parser.add_argument("--target", type=float, default=1.5, help="required dB over BM3D/BM4D")
    parser.add_argument("--ensemble", type=int, default=1, help="also score an N-fold self-ensemble")
    parser.add_argument("--adapt", type=int, default=0, metavar="STEPS",
                        help="also score the model adapted to each image over STEPS steps (toolbox denoise --adapt)")
    parser.add_argument("--true-sigma", action="store_true",
                        help="also score a noise-conditional model given the true sigma")
    parser.add_argument("--unit", default="8-bit grey levels", help="the unit of the level in brackets")
    parser.add_argument("--per-unit", type=float, default=255.0,
                        help="that unit per normalised unit (255 for 8-bit grey levels, 2000 for HU in a 2000 HU window)")
    args = parser.parse_args()

    from rich.console import Console

    from toolbox import evaluate

    quiet = Console(quiet=True)
    reports = {}
    for sigma in args.sigmas:
        reports[sigma] = evaluate(Path(args.model), args.data, noise_spec={"type": args.noise_type, "sigma": sigma},
                                  out_dir=Path(args.out) / f"sigma_{sigma}", device_name="cpu", console=quiet,
                                  ensemble=args.ensemble, true_sigma=args.true_sigma, adapt=args.adapt)
    methods = list(next(iter(reports.values()))["mean"])
    models = [m for m in methods if m.startswith("model")]
    model = models[0]
    # Against BM3D / BM4D as it is meant to be used on the noise: with the Rician bias removed
    # for Rician noise (the plain filter keeps the biased background, which flatters a model).
    classical = ("BM3D + Rician inverse", "BM4D + Rician inverse") if args.noise_type == "rician" else ()
    reference = next((m for m in methods if m in classical), None) or next(
        (m for m in methods if m in ("BM3D", "BM4D")), None)
    images = sorted({r["image"] for r in next(iter(reports.values()))["rows"]})
    print(f"Mean PSNR dB / SSIM over {', '.join(images)}; {args.noise_type.capitalize()} noise, sigma in normalised units "
          f"(in brackets: {args.unit})\n")
    margins = [f"{m.split(' (')[0]} - {reference}" for m in models] if reference else []
    header = ["sigma"] + methods + (margins + ["target"] if reference else [])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for sigma, report in reports.items():
        mean = report["mean"]
        best = max((m for m in methods if m not in models), key=lambda m: mean[m]["psnr"])
        cells = [f"{sigma:g} ({args.per_unit * sigma:.3g})"]
        for method in methods:
            cell = f"{mean[method]['psnr']:.2f} / {mean[method]['ssim']:.3f}"
            cells.append(f"**{cell}**" if (method == best or method in models) and mean[method]["psnr"] >= mean[best]["psnr"]
                         else cell)
        if reference:
            margin = max(mean[m]["psnr"] for m in models) - mean[reference]["psnr"]  # the best model row
            cells += [f"{mean[m]['psnr'] - mean[reference]['psnr']:+.2f}" for m in models]
            cells += ["met" if margin >= args.target else f"short by {args.target - margin:.2f} dB"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
