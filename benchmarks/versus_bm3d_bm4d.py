"""A trained model against BM3D (2D) / BM4D (3D) side by side: seconds and PSNR/SSIM.

Gaussian noise of the given sigma (in the recipe's normalised units, as in training) is
added to the clean image with a fixed seed, and both methods denoise the same noisy image
in its own units on this machine, one after the other, through the same normalisation as
``toolbox denoise``; BM3D / BM4D get the true sigma.  Scores are in the image's units over
the whole image (HU for CT, data range as ``toolbox evaluate`` states it).  The
model's time is the best of ``--repeats`` runs after one warm-up run (thread pools and
allocator warm); BM3D / BM4D run once (they take seconds to minutes).

``--variants`` times the model once per inference setting in the same run (``patch``: the
default windows; ``auto``: ``--window auto``; ``amp``: ``--amp``; ``auto+amp``), so that the
speed-ups are measured side by side on the same noisy image.

``--held-out AXIS:START:STOP`` scores a sub-range too (e.g. the slices of a volume the
model never trained on), so that a speed measurement on a full volume still reports
an honest quality figure.

BM3D and BM4D (PyPI ``bm3d`` / ``bm4d``) are non-commercial binaries: install them only in
a benchmark environment, never as a toolbox dependency:

    python3 -m venv .venv-bench && . .venv-bench/bin/activate
    pip install torch==2.13.0 && pip install -e . bm3d bm4d
    python benchmarks/versus_bm3d_bm4d.py plugins/pretrained/ct.pt samples/ct/test/spine.nii.gz --sigma 0.025 \
        --target 20 --variants patch auto amp auto+amp
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch


# toolbox denoise's --window / --amp, by the names --variants takes.
VARIANTS = {"patch": {}, "auto": {"window": "auto"}, "amp": {"amp": True},
            "auto+amp": {"window": "auto", "amp": True}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="run folder or checkpoint (plugins/pretrained/NAME.pt for a shipped model)")
    parser.add_argument("image", help="a clean image (NIfTI, TIFF, DICOM series ...)")
    parser.add_argument("--sigma", type=float, required=True, help="Gaussian sigma, normalised units")
    parser.add_argument("--target", type=float, default=None, help="required speed-up over BM3D/BM4D")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--held-out", help="AXIS:START:STOP of the spatial array also scored alone")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--variants", nargs="+", default=["patch"], choices=sorted(VARIANTS),
                        help="inference settings to time (toolbox denoise --window / --amp)")
    args = parser.parse_args()

    from toolbox import (build_cases, classical_baseline, denoise_options, denoise_with_model, load_model, psnr_ssim,
                         run_baseline)

    device = torch.device("cpu")
    model = load_model(Path(args.model), device)
    case = build_cases(model, [Path(args.image)], noise_spec={"type": "gaussian", "sigma": args.sigma},
                       seed=args.seed)[0]
    dims = case.clean.ndim - 1
    voxels = int(np.prod(case.clean.shape[1:]))

    runs = []  # (label, denoised, best seconds) per variant
    for variant in args.variants:
        told = denoise_options(model, **VARIANTS[variant])
        denoise_with_model(told, case.noisy, case.slice_axis, device)  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            denoised = denoise_with_model(told, case.noisy, case.slice_axis, device)
            best = min(best, time.perf_counter() - started)
        runs.append((f"model ({model.name}, {variant})", denoised, best))
    started = time.perf_counter()
    classical = run_baseline(classical_baseline, model.recipe["data"]["normalize"], case.noisy, case.sigma)
    classical_seconds = time.perf_counter() - started
    name = "BM3D" if dims == 2 else "BM4D"

    regions = [("whole", (slice(None),) * (dims + 1))]
    if args.held_out:
        axis, start, stop = (int(v) for v in args.held_out.split(":"))
        index = [slice(None)] * (dims + 1)
        index[axis + 1] = slice(start, stop)
        regions.append((f"axis {axis} {start}:{stop}", tuple(index)))

    def scores(result, index):
        return psnr_ssim(np.ascontiguousarray(result[index]), np.ascontiguousarray(case.clean[index]), dims,
                         case.data_range)

    shape = "x".join(map(str, case.clean.shape[1:]))
    print(f"{case.name} ({shape}, {voxels:,} voxels), Gaussian sigma {args.sigma} of the normalised range "
          f"(= {case.sigma:.4g} in the image's units), {torch.get_num_threads()} threads\n")
    print("| method | seconds | voxels/s | " + " | ".join(f"PSNR / SSIM ({r})" for r, _ in regions) + " |")
    print("|---|---|---|" + "---|" * len(regions))
    for label, result, seconds in (("noisy", case.noisy, None), *runs,
                                   (f"{name} (true sigma)", classical, classical_seconds)):
        cells = [f"{p:.2f} / {s:.3f}" for p, s in (scores(result, index) for _, index in regions)]
        timing = "-" if seconds is None else f"{seconds:.2f}"
        rate = "-" if seconds is None else f"{voxels / seconds:,.0f}"
        print(f"| {label} | {timing} | {rate} | " + " | ".join(cells) + " |")
    print()
    for label, denoised, seconds in runs:
        speedup = classical_seconds / seconds
        verdict = ("" if args.target is None else
                   f" (target {args.target:.0f}x: {'met' if speedup >= args.target else f'missed by {args.target / speedup:.1f}x'})")
        gains = ", ".join(f"{scores(denoised, index)[0] - scores(classical, index)[0]:+.2f} dB ({region})"
                          for region, index in regions)
        print(f"{label}: {speedup:.1f}x faster than {name}{verdict}; PSNR - {name}: {gains}")


if __name__ == "__main__":
    main()
