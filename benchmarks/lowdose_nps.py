"""A low-dose CT model on simulated low-dose slices: PSNR in HU and the noise power spectrum
(NPS) of the residual before and after denoising.

    python benchmarks/lowdose_nps.py RUN_DIR samples/ct/test --I0 1e4 3e4 1e5

For each slice and dose: the noisy slice (``low_dose_ct`` at that I0, seeded), the model's
output, PSNR / SSIM in HU over the whole slice (data range 2000 HU), and the radially
averaged NPS of ``noisy - clean`` and ``denoised - clean`` inside the body (HU > -500):
its total (the variance, HU^2), its centroid frequency (where the noise power sits:
denoisers that only blur move it down), and the share of power above 0.25 cycles/pixel.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def nps(residual: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged NPS (HU^2 per frequency bin) of ``residual`` inside ``mask``."""
    values = np.where(mask, residual - residual[mask].mean(), 0.0)
    h, w = values.shape
    # Parseval: the bins sum to the residual's variance inside the mask.
    power = np.abs(np.fft.fftshift(np.fft.fft2(values))) ** 2 / (h * w * max(mask.sum(), 1))
    fy, fx = np.meshgrid(np.fft.fftshift(np.fft.fftfreq(h)), np.fft.fftshift(np.fft.fftfreq(w)), indexing="ij")
    radius = np.hypot(fy, fx)
    bins = np.linspace(0, 0.5, 26)
    which = np.digitize(radius.ravel(), bins) - 1
    spectrum = np.bincount(which, power.ravel(), minlength=len(bins))[: len(bins) - 1]
    return 0.5 * (bins[1:] + bins[:-1]), spectrum


def describe(frequencies, spectrum) -> tuple[float, float, float]:
    total = spectrum.sum()
    centroid = float((frequencies * spectrum).sum() / total)
    high = float(spectrum[frequencies > 0.25].sum() / total)
    return float(total), centroid, high


def main() -> None:
    import toolbox

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("data", nargs="+")
    parser.add_argument("--I0", nargs="+", type=float, default=[1e4, 3e4, 1e5])
    parser.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args()
    model = toolbox.load_model(args.model)
    from toolbox.io import expand_inputs, formats_of

    files = expand_inputs(args.data, formats_of(toolbox.plugin_registry()))
    print("| slice | I0 | PSNR noisy / denoised dB | SSIM noisy / denoised | residual variance HU^2 "
          "noisy / denoised | NPS centroid cycles/px noisy / denoised | power > 0.25 c/px noisy / denoised |")
    print("|---|---|---|---|---|---|---|")
    for path in files:
        volume = toolbox.read_volume(path)
        clean = volume.array[..., 0] if volume.array.ndim == 4 else volume.array  # (1, H, W)
        body = clean[0] > -500
        for index, I0 in enumerate(args.I0):
            noise = toolbox.build("noise_models", {"type": "low_dose_ct", "I0": I0})
            generator = torch.Generator().manual_seed(args.seed + index)
            noisy = noise(torch.from_numpy(clean), generator, spacing=volume.spacing[:2]).numpy()
            denoised = toolbox.denoise_with_model(model, noisy, None, torch.device("cpu"))
            scores = [toolbox.psnr_ssim(image, clean, 2, 2000.0) for image in (noisy, denoised)]
            shapes = [describe(*nps((image - clean)[0], body)) for image in (noisy, denoised)]
            print(f"| {path.name} | {I0:.0e} | {scores[0][0]:.2f} / {scores[1][0]:.2f} | "
                  f"{scores[0][1]:.3f} / {scores[1][1]:.3f} | {shapes[0][0]:.0f} / {shapes[1][0]:.0f} | "
                  f"{shapes[0][1]:.3f} / {shapes[1][1]:.3f} | {shapes[0][2]:.2f} / {shapes[1][2]:.2f} |")


if __name__ == "__main__":
    main()
