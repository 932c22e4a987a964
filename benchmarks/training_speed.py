"""Training throughput of recipes and how close it runs to the machine's convolution peak.

For each recipe: the real bundled data, parts and scheme are built as ``toolbox run``
builds them; after warm-up steps, ``--steps`` training steps are timed (steps/s and
samples/s, where a step's samples count every batch the scheme draws).  One step is run
under torch's FLOP counter (forward and backward of every network, so both the generator
and the discriminator) to give the achieved FLOP/s.

The peak is measured, not taken from a data sheet: a wide 3x3(x3) convolution (64 -> 64
channels, forward + backward) timed on this machine, the best case for the same kernels
the models use.  ``--blocks`` adds, for the first recipe, the FLOPs per output voxel of each
top-level block and the operators that take the most time (torch's profiler), so a change
can aim at what costs the time.

    python benchmarks/training_speed.py recipes/adl3d.yaml recipes/pix2pix_ct.yaml --blocks

Prints Markdown tables.  Run it on an idle machine: two jobs on two cores halve both.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def convolution_peak(spatial_dims: int, repeats: int = 5) -> float:
    """FLOP/s of a 64 -> 64 channel 3x3(x3) convolution, forward and backward."""
    conv = torch.nn.Conv3d(64, 64, 3, padding=1) if spatial_dims == 3 else torch.nn.Conv2d(64, 64, 3, padding=1)
    shape = (2, 64, 32, 32, 32) if spatial_dims == 3 else (8, 64, 96, 96)
    x = torch.randn(shape, requires_grad=True)

    def once():
        conv(x).sum().backward()

    with FlopCounterMode(display=False) as counter:
        once()
    flops = counter.get_total_flops()
    once()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - started)
    return flops / best


def build(recipe_path: str, overrides: list[str]):
    import toolbox

    recipe = toolbox.load_recipe(recipe_path, overrides)
    config = recipe.data
    toolbox.seed_everything(int(config["seed"]))
    data = toolbox.build_data(config, recipe.source)
    parts, scheme = toolbox.build_scheme(recipe, "cpu", amp=config["train"]["amp"],
                                         channels_last=config["train"]["channels_last"])
    return config, data, parts, scheme


def batches_for(data, parts, batch_size: int, count: int, start: int):
    from toolbox import make_loader

    loader = make_loader(data.train, batch_size, list(range(start * batch_size, (start + count) * batch_size)))
    return [parts.to_device(batch) for batch in loader]


def adversarial_step(scheme) -> int:
    """A step number in the scheme's adversarial phase (after any warm-up)."""
    return int(getattr(scheme, "warmup_g", 0)) + int(getattr(scheme, "warmup_d", 0)) + 1


def measure(recipe_path: str, steps: int, overrides: list[str]) -> dict:
    config, data, parts, scheme = build(recipe_path, overrides)
    batch_size = int(config["train"]["batch_size"])
    per_step = int(getattr(scheme, "batches_per_step", 1))
    pool = batches_for(data, parts, batch_size, per_step * (steps + 3), 0)
    step_number = adversarial_step(scheme)
    scheme.train(True)

    def step(i):
        scheme.train_step(pool[i * per_step:(i + 1) * per_step], step_number)

    try:
        with FlopCounterMode(display=False) as counter:
            step(0)
        flops = counter.get_total_flops()
    except RuntimeError:
        # FlopCounterMode's module tracking cannot follow autograd.grad (the WGAN-GP
        # gradient penalty's double backward): the step is timed, its FLOPs not counted.
        flops = float("nan")
        step(0)
    step(1)
    step(2)  # warm-up
    started = time.perf_counter()
    for i in range(3, 3 + steps):
        step(i)
    seconds = (time.perf_counter() - started) / steps
    patch = config["data"]["patch_size"]
    voxels = int(torch.tensor(patch).prod()) * batch_size * per_step
    return {"recipe": recipe_path, "dims": config["data"]["spatial_dims"], "patch": patch,
            "batch": f"{batch_size} x {per_step}", "steps_per_s": 1 / seconds,
            "samples_per_s": batch_size * per_step / seconds, "gflop_per_step": flops / 1e9,
            "gflops": flops / seconds / 1e9, "flop_per_voxel": flops / voxels,
            "params": {k: sum(p.numel() for p in m.parameters()) for k, m in scheme.modules().items()}}


def block_breakdown(recipe_path: str, overrides: list[str], top: int = 8) -> tuple[list, list]:
    """FLOPs per output voxel of each top-level block of the generator (one forward +
    backward), and the operators taking the most time over a few training steps."""
    from toolbox import unwrap

    config, data, parts, scheme = build(recipe_path, overrides)
    batch_size = int(config["train"]["batch_size"])
    per_step = int(getattr(scheme, "batches_per_step", 1))
    pool = batches_for(data, parts, batch_size, per_step * 4, 0)
    generator = unwrap(scheme.generator)
    voxels = int(torch.tensor(config["data"]["patch_size"]).prod()) * batch_size
    with FlopCounterMode(display=False) as counter:
        output = generator(pool[0]["input"])
        output = output[0] if isinstance(output, (tuple, list)) else output
        output.float().mean().backward()
    generator.zero_grad(set_to_none=True)
    name = type(generator).__name__
    counts = counter.get_flop_counts()
    blocks = []
    for module_name, by_op in counts.items():
        parts_of_name = module_name.split(".")
        if len(parts_of_name) == 2 and parts_of_name[0] == name:  # top-level children
            blocks.append((parts_of_name[1], sum(by_op.values()) / voxels))
    blocks.sort(key=lambda b: -b[1])

    step_number = adversarial_step(scheme)
    scheme.train_step(pool[:per_step], step_number)  # warm-up
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for i in range(1, 4):
            scheme.train_step(pool[i * per_step:(i + 1) * per_step], step_number)
    events = sorted(profiler.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    ops = [(e.key, e.self_cpu_time_total / total) for e in events[:top]]
    return blocks, ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override applied to every recipe (e.g. train.channels_last=true)")
    parser.add_argument("--blocks", action="store_true", help="per-block FLOPs and top operators")
    args = parser.parse_args()
    torch.manual_seed(0)
    peaks = {dims: convolution_peak(dims) for dims in (2, 3)}
    print(f"Measured convolution peak (64 -> 64 channels, 3x3(x3), forward + backward, "
          f"{torch.get_num_threads()} threads): 2D {peaks[2] / 1e9:.1f} GFLOP/s, 3D {peaks[3] / 1e9:.1f} GFLOP/s\n")
    print("| recipe | patch | batch x draws | steps/s | samples/s | GFLOP/step | FLOP/voxel | GFLOP/s | of peak |")
    print("|---|---|---|---|---|---|---|---|---|")
    for recipe in args.recipes:
        r = measure(recipe, args.steps, args.overrides)
        share = r["gflops"] * 1e9 / peaks[r["dims"]]
        counted = r["gflop_per_step"] == r["gflop_per_step"]  # not NaN
        flop_cells = (f"{r['gflop_per_step']:.2f} | {r['flop_per_voxel'] / 1e3:.1f}k | {r['gflops']:.1f} | "
                      f"{100 * share:.0f}%") if counted else "n/a | n/a | n/a | n/a"
        print(f"| {r['recipe']} | {'x'.join(map(str, r['patch']))} | {r['batch']} | {r['steps_per_s']:.2f} | "
              f"{r['samples_per_s']:.1f} | {flop_cells} |", flush=True)
    if args.blocks:
        blocks, ops = block_breakdown(args.recipes[0], args.overrides)
        print(f"\nGenerator of {args.recipes[0]}: forward + backward FLOPs per output voxel, by block\n")
        print("| block | kFLOP/voxel |")
        print("|---|---|")
        for name, per_voxel in blocks:
            print(f"| {name} | {per_voxel / 1e3:.1f} |")
        print(f"\nWhere a training step's time goes (self CPU time, 3 steps, torch.profiler)\n")
        print("| operator | share of time |")
        print("|---|---|")
        for name, share in ops:
            print(f"| {name} | {100 * share:.1f}% |")


if __name__ == "__main__":
    main()
