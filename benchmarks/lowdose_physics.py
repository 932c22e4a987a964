"""Low-dose CT noise model: physics checks and cost, on a water phantom and a real CT slice.

    python benchmarks/lowdose_physics.py [--slice samples/ct/train/abdomen.nii.gz]

Prints (markdown) the noise SD in a water disc against I0 (it should scale as 1/sqrt(I0)),
the mean HU change, the streak ratio between two dense inserts, and the seconds per slice
of the projector and the FBP at 360 and 720 views; then the noise SD inside the body of a
real slice at a few doses.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def phantom(size=256, pixel=1.0, inserts=False):
    y, x = (np.mgrid[:size, :size] - (size - 1) / 2) * pixel
    hu = np.where(x**2 + y**2 <= 100**2, 0.0, -1000.0)
    if inserts:
        for cx in (-60, 60):
            hu[(x - cx) ** 2 + y**2 <= 15**2] = 3000.0
    return torch.from_numpy(hu.astype(np.float32))[None], y, x


def noise_of(model, image, spacing, seed=0):
    return (model(image, torch.Generator().manual_seed(seed), spacing=spacing) - image)[0].numpy()


def main() -> None:
    import toolbox

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slice", default="samples/ct/train/abdomen.nii.gz")
    args = parser.parse_args()
    image, y, x = phantom()
    inside = x**2 + y**2 <= 75**2
    print("| I0 | noise SD (HU) | SD x sqrt(I0 / 1e5) | mean HU change |\n|---|---|---|---|")
    for I0 in (1e4, 3e4, 1e5, 3e5):
        model = toolbox.build("noise_models", {"type": "low_dose_ct", "I0": I0, "electronic_sd": 0.0})
        noise = noise_of(model, image, (1.0, 1.0))[inside]
        print(f"| {I0:.0e} | {noise.std():.1f} | {noise.std() * np.sqrt(I0 / 1e5):.2f} | {noise.mean():+.2f} |")
    dense, _, _ = phantom(inserts=True)
    band = (np.abs(y) < 6) & (np.abs(x) < 40)
    aside = (np.abs(y) > 25) & (np.abs(y) < 40) & (np.abs(x) < 40)
    model = toolbox.build("noise_models", {"type": "low_dose_ct", "I0": 5e4})
    plain_noise, dense_noise = noise_of(model, image, (1.0, 1.0)), noise_of(model, dense, (1.0, 1.0))
    print(f"\nStreaks (I0 5e4, two 3000 HU inserts 30 mm across, 120 mm apart): SD on the line "
          f"between them {dense_noise[band].std():.1f} HU (plain water {plain_noise[band].std():.1f}); "
          f"on the line / beside it {dense_noise[band].std() / dense_noise[aside].std():.2f} "
          f"(plain {plain_noise[band].std() / plain_noise[aside].std():.2f})\n")
    from skimage.transform import iradon, radon

    print("| slice | views | radon s | iradon s |\n|---|---|---|---|")
    for size in (256, 512):
        slab = np.random.default_rng(0).random((size, size))
        for views in (360, 720):
            angles = np.linspace(0, 180, views, endpoint=False)
            started = time.perf_counter()
            sinogram = radon(slab, theta=angles, circle=False)
            middle = time.perf_counter()
            iradon(sinogram, theta=angles, circle=False, output_size=size)
            print(f"| {size}x{size} | {views} | {middle - started:.2f} | {time.perf_counter() - middle:.2f} |")
    volume = toolbox.read_volume(args.slice)
    hu = torch.from_numpy(volume.array.reshape(1, *volume.array.shape[1:3]))
    body = hu[0].numpy() > -500
    print(f"\n{args.slice} ({volume.spacing[0]:.3f} mm pixels): noise SD inside the body")
    print("| I0 | SD (HU) |\n|---|---|")
    for I0 in (1e4, 5e4, 2e5):
        model = toolbox.build("noise_models", {"type": "low_dose_ct", "I0": I0})
        print(f"| {I0:.0e} | {noise_of(model, hu, volume.spacing[:2])[body].std():.1f} |")


if __name__ == "__main__":
    main()
