"""Inference time and peak memory of sliding-window denoising for growing 3D volumes.

Each size runs in a fresh process so that its peak resident memory (ru_maxrss) is its own.
The network is the recipe's generator with its initial weights: speed and memory do not
depend on what the weights are.

    python benchmarks/inference_scale.py recipes/adl3d.yaml --sizes 64 96 128
    python benchmarks/inference_scale.py recipes/adl3d.yaml --shape 512 512 300

Prints one Markdown table row per volume: voxels, seconds, voxels/s, peak RSS (MB).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(recipe_path: str, shape: list[int]) -> dict:
    import numpy as np
    import torch

    import toolbox
    from toolbox import TrainedModel, denoise_with_model

    torch.manual_seed(0)
    recipe = toolbox.load_recipe(recipe_path).data
    generator = toolbox.build_generator(recipe, recipe_path).eval()
    model = TrainedModel(generator, recipe, "benchmark", None)
    volume = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    started = time.perf_counter()
    denoise_with_model(model, volume, None, torch.device("cpu"), overlap=0.25)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"shape": shape, "voxels": int(np.prod(shape)), "seconds": seconds, "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--sizes", nargs="*", type=int, default=[64, 96, 128], help="cube edges")
    parser.add_argument("--shape", nargs=3, type=int, action="append", help="a non-cubic volume")
    parser.add_argument("--one", nargs="+", type=int, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.recipe, args.one)))
        return
    shapes = [[s, s, s] for s in args.sizes] + (args.shape or [])
    print("| volume | voxels | seconds | voxels/s | peak RSS MB |")
    print("|---|---|---|---|---|")
    for shape in shapes:
        out = subprocess.run([sys.executable, __file__, args.recipe, "--one", *map(str, shape)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {'x'.join(map(str, r['shape']))} | {r['voxels']:,} | {r['seconds']:.1f} | "
              f"{r['voxels'] / r['seconds']:,.0f} | {r['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
