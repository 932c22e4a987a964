"""Simulated high-resolution TEM images of metal nanoparticles on amorphous carbon, as seed 001
trains on: the bundled clean set for electron-microscopy recipes (``samples/em/``).

Physics by abTEM (multislice with independent-atom potentials) and ASE (the structures):
a cuboctahedral / octahedral Au, Pt or Pd particle of random size, in a random orientation,
on a slab of amorphous carbon, imaged with a plane wave at 300 kV through an objective lens
of random defocus (spherical aberration fixed), then integrated over the detector's pixels.  The
images are noise-free intensities (1 = the incident beam); noise (Poisson at a dose,
Gaussian) is added by the toolbox's noise models in training and evaluation.

Not a toolbox dependency; needs ``pip install abtem`` (abTEM 1.0, ASE 3.29 here), then:

    python samples/simulate_em.py                 # writes samples/em/{train,test}/*.tif
    python samples/simulate_em.py --count 8 --held-out 2 --out /tmp/em   # a quick look

Every image is a pure function of its index and the seed (the manifest lists them), so the
set can be rebuilt exactly.  Train and test use disjoint seeds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

ENERGY = 300e3  # eV
SAMPLING = 0.05  # Angstrom, of the potential and the wave
FIELD = 32.0  # Angstrom, the image's side
PIXELS = 64  # the detector grid: 0.5 Angstrom pixels
CS = -20e4  # Angstrom (-20 um: an aberration-corrected microscope, as in the seed's data)


def structure(rng: np.random.Generator):
    """A particle on an amorphous carbon slab, centred in a FIELD x FIELD cell."""
    from ase import Atoms
    from ase.cluster import Octahedron

    element = rng.choice(["Au", "Pt", "Pd"])
    length = int(rng.integers(5, 9))
    cutoff = int(rng.integers(1, max(2, length // 2)))
    particle = Octahedron(element, length, cutoff=cutoff)
    for axis in "xyz":
        particle.rotate(float(rng.uniform(0, 360)), axis, center="COP")
    positions = particle.get_positions()
    positions -= positions.mean(axis=0)
    positions[:, :2] += FIELD / 2 + rng.uniform(-3, 3, size=2)
    thickness = float(rng.uniform(8, 15))  # Angstrom of carbon under the particle
    positions[:, 2] += thickness + (positions[:, 2].max() - positions[:, 2].min()) / 2 + 2
    particle.set_positions(positions)
    # Amorphous carbon: random positions at 2.0 g/cm3 (0.1 atoms per cubic Angstrom), with
    # atoms closer than 1.2 Angstrom to an earlier one dropped (no overlapping potentials).
    count = int(0.1 * FIELD * FIELD * thickness)
    carbon = rng.uniform([0, 0, 0], [FIELD, FIELD, thickness], size=(count, 3))
    kept = _thin(carbon, 1.2)
    support = Atoms("C" * len(kept), positions=kept)
    atoms = support + particle
    atoms.set_cell([FIELD, FIELD, float(atoms.get_positions()[:, 2].max()) + 2])
    atoms.set_pbc(True)
    return atoms, {"element": str(element), "octahedron_length": length, "cutoff": cutoff,
                   "particle_atoms": len(particle), "carbon_thickness": round(thickness, 2)}


def _thin(points: np.ndarray, distance: float) -> np.ndarray:
    from scipy.spatial import cKDTree

    tree = cKDTree(points)
    dropped = set()
    for i, j in sorted(tree.query_pairs(distance)):
        if i not in dropped:
            dropped.add(j)
    return points[[k for k in range(len(points)) if k not in dropped]]


def simulate(index: int, seed: int) -> tuple[np.ndarray, dict]:
    import abtem

    rng = np.random.default_rng([seed, index])
    atoms, described = structure(rng)
    defocus = float(rng.uniform(-80, 20))  # Angstrom (Scherzer is about -50 here)
    potential = abtem.Potential(atoms, sampling=SAMPLING, slice_thickness=1.0, projection="infinite")
    wave = abtem.PlaneWave(energy=ENERGY)
    exit_wave = wave.multislice(potential)
    ctf = abtem.CTF(defocus=defocus, Cs=CS, energy=ENERGY, semiangle_cutoff=25)
    fine = np.asarray(exit_wave.apply_ctf(ctf).intensity().compute().array, np.float64)
    # Detector pixels integrate the intensity over their area: block means of the fine grid
    # (Fourier interpolation would ring into negative intensities, which no dose can count).
    block = fine.shape[0] // PIXELS
    fine = fine[: block * PIXELS, : block * PIXELS]
    image = fine.reshape(PIXELS, block, PIXELS, block).mean(axis=(1, 3)).astype(np.float32)
    described.update(index=index, seed=seed, defocus=round(defocus, 1), cs=CS, energy=ENERGY)
    return image, described


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "em"))
    parser.add_argument("--count", type=int, default=96, help="training images")
    parser.add_argument("--held-out", type=int, default=16, help="held-out images (other seeds)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    import abtem
    import tifffile

    abtem.config.set({"device": "cpu"})
    out = Path(args.out)
    manifest = {"abtem": abtem.__version__, "pixels": PIXELS, "field_angstrom": FIELD, "images": []}
    started = time.time()
    for split, count, seed in (("train", args.count, args.seed), ("test", args.held_out, args.seed + 1000)):
        (out / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, described = simulate(index, seed)
            path = out / split / f"np_{seed}_{index:03d}.tif"
            tifffile.imwrite(path, image, compression="zlib",
                             resolution=(PIXELS / FIELD * 1e8, PIXELS / FIELD * 1e8), resolutionunit="CENTIMETER")
            described.update(file=str(path.relative_to(out)),
                             sha256=hashlib.sha256(path.read_bytes()).hexdigest())
            manifest["images"].append(described)
            print(f"{split} {index + 1}/{count}: {described['element']} {described['particle_atoms']} atoms, "
                  f"defocus {described['defocus']} A, {time.time() - started:.0f} s")
    manifest["seconds"] = round(time.time() - started, 1)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in out.rglob("*.tif"))
    print(f"wrote {len(manifest['images'])} images ({size / 2**20:.2f} MB) in {manifest['seconds']} s to {out}")


if __name__ == "__main__":
    main()
