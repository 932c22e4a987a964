"""How close an exported model's output is to ``toolbox denoise``'s on held-out images, per
noise level: the BioImage Model Zoo package (plain percentiles, in-network noise estimate)
or the ONNX file, against the toolbox's own path, in the images' units.

    python benchmarks/export_fidelity.py MODEL DATA --format bioimageio \
        --noise '{type: poisson_gaussian, peak: 100, sigma: 0.005}' --sweep peak=10,30,100,300,1000

MODEL is a run folder, checkpoint or pretrained model name; DATA clean images.  A BMZ
package's output for per-image normalisation is in the input's percentile units: it is
mapped back with the same percentiles of the noisy input (what a user would do).
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import yaml

import toolbox


def _psnr(image: np.ndarray, clean: np.ndarray, data_range: float) -> float:
    return float(10 * np.log10(data_range**2 / np.mean((np.asarray(image, np.float64) - clean) ** 2)))


def _set(spec: dict, key: str, value) -> dict:
    """``spec`` with ``key`` (dotted, inside ``spec``; the innermost ``noise`` by default) set."""
    spec = copy.deepcopy(spec)
    target = spec
    parts = key.split(".")
    for part in parts[:-1]:
        target = target[part]
    target[parts[-1]] = value
    return spec


def _bioimageio_runner(package: Path):
    from bioimageio.core import load_model_description, predict

    description = load_model_description(package)
    window = None
    for step in description.outputs[0].postprocessing:
        if step.id == "scale_linear":
            window = step  # the output is in the input's units already

    def run(noisy: np.ndarray) -> np.ndarray:
        sample = predict(model=description, inputs={"input": noisy[None].astype(np.float32)})
        (member,) = sample.members.values()
        output = np.asarray(member.data, np.float32)[0]
        if window is not None:
            return output
        low, high = np.percentile(noisy, [0.5, 99.5])
        return output * (high - low + 1e-6) + low

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("data", nargs="+")
    parser.add_argument("--format", default="bioimageio", choices=["bioimageio"])
    parser.add_argument("--noise", required=True, help="a noise model (YAML), levels in normalised units")
    parser.add_argument("--sweep", help="KEY=V1,V2,...: the noise spec's KEY at each value")
    args = parser.parse_args()

    model_path = Path(args.model)
    if not model_path.exists():
        model_path = Path(str(toolbox.components("models")[args.model].factory()))
    model = toolbox.load_model(model_path)
    noise = yaml.safe_load(args.noise)
    levels = [None]
    if args.sweep:
        key, values = args.sweep.split("=", 1)
        levels = [(key, yaml.safe_load(v)) for v in values.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        package = Path(folder) / "model.zip"
        subprocess.run(["toolbox", "export", str(model_path), "--format", args.format, "-o", str(package)],
                       check=True, capture_output=True)
        run = _bioimageio_runner(package)
        print(f"| noise | image | noisy | toolbox denoise | {args.format} | difference |")
        print("|---|---|---|---|---|---|")
        for level in levels:
            spec = noise if level is None else _set(noise, level[0], level[1])
            for case in toolbox.build_cases(model, args.data, noise_spec=spec):
                own = toolbox.denoise_with_model(model, case.noisy, case.slice_axis, "cpu")
                exported = run(case.noisy)
                if case.noisy.shape == case.clean.shape:
                    noisy_psnr = f"{_psnr(case.noisy, case.clean, case.data_range):.2f}"
                else:
                    noisy_psnr = "-"  # a smaller (super-resolution) input
                scores = [_psnr(own, case.clean, case.data_range), _psnr(exported, case.clean, case.data_range)]
                label = "" if level is None else f"{level[0]}={level[1]}"
                print(f"| {label} | {case.name} | {noisy_psnr} | {scores[0]:.2f} | {scores[1]:.2f} | "
                      f"{scores[1] - scores[0]:+.2f} |")


if __name__ == "__main__":
    main()
