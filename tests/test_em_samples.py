"""The bundled simulated electron micrographs (samples/em, written by samples/simulate_em.py
with abTEM): what the manifest says is what is there, and the images are physical."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import tifffile

import toolbox
from conftest import SAMPLES

EM = SAMPLES / "em"


def test_every_micrograph_is_in_the_manifest_with_its_hash_and_parameters():
    manifest = json.loads((EM / "manifest.json").read_text())
    listed = {entry["file"]: entry for entry in manifest["images"]}
    files = sorted(str(p.relative_to(EM)) for p in EM.rglob("*.tif"))
    assert files == sorted(listed) and len(files) == 112
    for name, entry in listed.items():
        assert hashlib.sha256((EM / name).read_bytes()).hexdigest() == entry["sha256"]
        assert entry["element"] in ("Au", "Pt", "Pd") and -80 <= entry["defocus"] <= 20
    train_seeds = {e["seed"] for e in manifest["images"] if e["file"].startswith("train/")}
    test_seeds = {e["seed"] for e in manifest["images"] if e["file"].startswith("test/")}
    assert train_seeds and test_seeds and not train_seeds & test_seeds  # held out: other seeds


def test_micrographs_are_noise_free_intensities_with_lattice_contrast():
    for path in sorted(EM.rglob("*.tif"))[::7]:
        image = tifffile.imread(path)
        assert image.shape == (64, 64) and image.dtype == np.float32
        # Intensity relative to the incident beam: about 1 on average, phase contrast around it.
        assert 0.8 < float(image.mean()) < 1.2 and 0.0 < float(image.min()) and float(image.max()) < 4
        # Contrast at the lattice scale (0.5 A pixels: periods of a few pixels) dominates.
        spectrum = np.abs(np.fft.fftshift(np.fft.fft2(image - image.mean()))) ** 2
        radius = np.hypot(*np.meshgrid(np.arange(64) - 32, np.arange(64) - 32, indexing="ij"))
        assert spectrum[(radius > 6) & (radius < 24)].sum() > spectrum[(radius > 0) & (radius <= 6)].sum()
    volume = toolbox.read_volume(EM / "test" / "np_1001_000.tif")
    assert volume.image_values().shape == (1, 64, 64)
