"""Models that leave the toolbox (``toolbox export``): the network as a file that another
runtime runs, checked against the toolbox's own output before success is reported.

Public API (a format plugin uses these; ``register_exporters`` registers one):

- ``Exporter``: the base of an export format: ``write(network, example, path)`` writes the
  file(s), ``load(path)`` loads them back with the runtime that users of that format use and
  returns a callable ``(image, noise_sd) -> output`` on NumPy arrays.
- ``ExportableNetwork``: a generator as an exported file runs it: a normalised image of any
  size in, the normalised output out (padding and cropping to the sizes the network needs
  happen inside, so one file serves every image size).
- ``ExportInfo``: what the export knows about the model (dims, channels, scale, size
  multiple, normalisation), and ``describe()`` for the sidecar ``.json`` that goes with it.

Why the exported file takes a *normalised* image (and the noise SD as a second input for a
noise-conditional model) rather than the raw one: the toolbox's normalisation picks its
levels with a chessboard split that is robust to noise (``toolbox.data.normalize``) and its
noise-level estimate uses wavelets; neither is a graph operation every runtime has.  The
sidecar says exactly what to compute, and formats that can express it (a MONAI Bundle, a
BioImage Model Zoo package) do it in their own pre-/post-processing.
"""

from __future__ import annotations

import abc
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from toolbox.errors import ToolboxError
from toolbox.infer import FirstOutput  # noqa: F401 - part of this public module

# Outputs must agree with the toolbox's own within this fraction of the reference output's
# range (fp32 on the CPU: exporters reorder additions, so agreement is never bit-exact).
RELATIVE_TOLERANCE = 1e-4


class ExportableNetwork(torch.nn.Module):
    """``generator`` as an exported file runs it.

    ``forward(image, noise_sd=None)``: ``image`` (N, C, *spatial) in normalised units, any
    spatial size; ``noise_sd`` (N,) in the same units, for a noise-conditional generator
    (it becomes the constant last channel the generator was trained with).  Each spatial size
    is padded (by reflection) up to a multiple of ``multiple``, which the generator's
    down-sampling needs, and the output is cropped back to ``size * scale``.
    """

    def __init__(self, generator: torch.nn.Module, spatial_dims: int, multiple: int = 1, scale: int = 1,
                 noise_level_map: bool = False):
        super().__init__()
        self.generator = generator
        self.spatial_dims = int(spatial_dims)
        self.multiple = int(multiple)
        self.scale = int(scale)
        self.noise_level_map = bool(noise_level_map)

    def forward(self, image: torch.Tensor, noise_sd: Optional[torch.Tensor] = None) -> torch.Tensor:
        sizes: List[int] = []
        pads: List[int] = []
        for axis in range(self.spatial_dims):
            size = image.shape[2 + axis]
            sizes.append(size)
            # F.pad lists the last axis first.
            pads = [0, (self.multiple - size % self.multiple) % self.multiple] + pads
        padded = image
        if self.multiple > 1:
            # Reflection, as the networks' own padding (toolbox.nn.pad_to_multiple) does, so
            # that padding here and there give the same output; it needs the pad shorter
            # than the axis, else edge values are repeated.
            reflect = True
            for axis in range(self.spatial_dims):
                if pads[2 * (self.spatial_dims - 1 - axis) + 1] >= sizes[axis]:
                    reflect = False
            padded = F.pad(image, pads, mode="reflect" if reflect else "replicate")
        if self.noise_level_map:
            if noise_sd is None:
                raise ValueError("this model is noise-conditional: give noise_sd (N,) in normalised units")
            level = noise_sd.to(padded.dtype).reshape([-1, 1] + [1] * self.spatial_dims)
            padded = torch.cat([padded, level.expand_as(padded[:, :1])], dim=1)
        output = self.generator(padded)
        if self.spatial_dims == 2:
            return output[:, :, : sizes[0] * self.scale, : sizes[1] * self.scale]
        return output[:, :, : sizes[0] * self.scale, : sizes[1] * self.scale, : sizes[2] * self.scale]


# The largest size multiple searched (3D probes grow as its cube).
LARGEST_MULTIPLE = {2: 64, 3: 16}


def size_multiple(generator: torch.nn.Module, spatial_dims: int, in_channels: int, scale: int = 1) -> int:
    """The size every input is padded to (a multiple of) before it reaches the network in an
    export: the generator's ``size_multiple`` attribute when it declares one, else the
    smallest power of two ``m`` such that the generator, traced at one multiple of ``m``,
    gives the same output as itself at the next three; checked either way.

    Networks pad their input to the multiple their down-sampling needs themselves, choosing
    with Python on the input's size (how much, reflection or repetition); a trace or an
    export graph records those choices as constants for the size it saw.  Padded to the
    network's multiple first, every input takes the same path through the network, the one
    the graph holds."""
    network = generator.network if isinstance(generator, FirstOutput) else generator
    declared = getattr(network, "size_multiple", None)
    multiple = int(declared) if declared else 1
    while True:
        # Traced at an odd multiple, checked at the next ones: a network that needs 2, 4 or
        # 8 times ``multiple`` pads those by different amounts, which a trace cannot follow.
        steps = 4 if spatial_dims == 2 or multiple < 16 else 2  # 3D probes grow as the cube
        sizes = [trace_size(multiple) + multiple * step for step in range(steps)]
        probes = [torch.rand((1, in_channels) + (size,) * spatial_dims,
                             generator=torch.Generator().manual_seed(size)) for size in sizes]
        if _trace_generalises(generator, probes, scale):
            return multiple
        if declared:
            raise ToolboxError(f"the generator, traced at size {sizes[0]}, does not give its own output at "
                               f"{sizes[1:]} although it declares size_multiple {declared}: it makes "
                               "size-dependent decisions that an export cannot record")
        if multiple >= LARGEST_MULTIPLE[spatial_dims]:
            raise ToolboxError(f"the generator does not give the same output when traced at one size and run at "
                               f"another, for any size multiple up to {multiple}: it makes size-dependent "
                               "decisions that an export cannot record (a size_multiple attribute on the "
                               "network says which multiple its inputs need)")
        multiple *= 2


def trace_size(multiple: int) -> int:
    """The size along each axis that exports are traced at: an odd multiple of ``multiple``
    (at least 12), so that the Python branches a network takes on sizes (pad or not) are
    the ones ``size_multiple`` checked to hold for every other multiple."""
    odd = 1
    while multiple * odd < 12:
        odd += 2
    return multiple * odd


def _trace_generalises(generator: torch.nn.Module, probes: list, scale: int) -> bool:
    with torch.no_grad():
        try:
            traced = torch.jit.trace(generator, probes[0], check_trace=False)
            for probe in probes[1:]:
                expected, got = generator(probe), traced(probe)
                wanted = tuple(s * scale for s in probe.shape[2:])
                if tuple(got.shape[2:]) != wanted or float((expected - got).abs().max()) > (
                        RELATIVE_TOLERANCE * max(float(expected.abs().max()), 1e-6)):
                    return False
        except RuntimeError:
            return False
    return True


@dataclass
class ExportInfo:
    """What an exported model is and takes (written beside it as ``NAME.json``)."""

    source: str
    generator: dict
    spatial_dims: int
    channels: int
    context_slices: int
    scale: int
    noise_level_map: bool
    multiple: int
    normalize: dict
    patch_size: list
    toolbox_version: str
    name: str = ""
    noise: Optional[dict] = None  # the recipe's data.noise: what the level estimate is told
    card: str = ""  # the model card's path, when the model has one
    overlap: float = 0.25  # the sliding windows' overlap toolbox denoise uses (train.val_overlap)
    format: str = ""
    runtime: str = ""
    files: list = field(default_factory=list)
    verification: dict = field(default_factory=dict)

    @property
    def rician(self) -> bool:
        """Whether the recipe's noise includes Rician noise (its level is then estimated from
        the background, as ``toolbox denoise`` does)."""
        from toolbox.noise_estimation import trained_on_rician

        return trained_on_rician(self.noise)

    def inputs(self) -> list[dict]:
        spatial = ("y", "x") if self.spatial_dims == 2 else ("z", "y", "x")
        channels = self.channels * self.context_slices
        described = [{"name": "image", "axes": ["batch", "channel", *spatial], "channels": channels,
                      "dtype": "float32", "units": "normalised (see normalize)",
                      "sizes": "any; padded inside to a multiple of "
                               f"{self.multiple} per spatial axis and cropped back"}]
        if self.noise_level_map:
            described.append({"name": "noise_sd", "axes": ["batch"], "dtype": "float32",
                              "units": "the noise SD divided by the normaliser's scale"})
        return described

    def outputs(self) -> list[dict]:
        spatial = ("y", "x") if self.spatial_dims == 2 else ("z", "y", "x")
        return [{"name": "output", "axes": ["batch", "channel", *spatial], "channels": self.channels,
                 "dtype": "float32", "units": "normalised: apply the inverse of normalize",
                 "sizes": f"the input's times {self.scale} per spatial axis"}]

    def describe(self) -> dict:
        described = asdict(self)
        described["inputs"] = self.inputs()
        described["outputs"] = self.outputs()
        described["preprocessing"] = NORMALISATION_NOTES.get(self.normalize.get("type", "percentile"), "")
        return described


NORMALISATION_NOTES = {
    "window": "normalised = (x - low) / (high - low) with the fixed window of normalize; nothing clipped; "
              "noise_sd = SD / (high - low); output * (high - low) + low gives the input's units",
    "percentile": "per image: dark and bright levels (mean of the darkest `low` % and brightest "
                  "100 - `high` % of voxels; toolbox.data.normalize.fit_normalizer estimates them robustly "
                  "to noise) -> 0 and 1; noise_sd = SD / (bright - dark); invert the same map on the output",
    "scale": "per image: x / bright (mean of the brightest 100 - `high` % of voxels), zero stays zero; "
             "noise_sd = SD / bright; multiply the output by bright",
    "minmax": "per image: min and max of a Gaussian-smoothed copy -> 0 and 1; invert on the output",
    "none": "values as they are",
}


class Exporter(abc.ABC):
    """The base of an export format (register a factory returning one with
    ``register_exporters``).  ``suffix`` is the file name ending users expect."""

    suffix = ""
    runtime = ""

    @abc.abstractmethod
    def write(self, network: ExportableNetwork, example: tuple, path: Path, info: ExportInfo) -> None:
        """Write ``network`` at ``path`` (a file, or a folder the format makes)."""

    @abc.abstractmethod
    def load(self, path: Path, info: ExportInfo) -> Callable[[np.ndarray, Optional[np.ndarray]], np.ndarray]:
        """Load ``path`` with the runtime the format's users run: ``run(image, noise_sd) -> output``."""

    def reference(self, network: ExportableNetwork, info: ExportInfo) -> Callable:
        """What ``load``'s callable must reproduce: ``network`` itself, unless the format
        adds processing of its own around it (then it says what, eagerly)."""

        def run(image: np.ndarray, noise_sd: Optional[np.ndarray] = None) -> np.ndarray:
            with torch.no_grad():
                level = None if noise_sd is None else torch.from_numpy(np.asarray(noise_sd, np.float32))
                return network(torch.from_numpy(np.asarray(image, np.float32)), level).numpy()

        return run


def made_image(sizes, channels: int, seed: int) -> torch.Tensor:
    """A test image (1, C, *sizes) in normalised units: smooth structure (random values on a
    grid 8 times coarser, interpolated) plus 5 % Gaussian noise."""
    generator = torch.Generator().manual_seed(seed)
    sizes = tuple(int(s) for s in sizes)
    coarse = torch.rand((1, channels) + tuple(max(2, s // 8) for s in sizes), generator=generator)
    mode = "bilinear" if len(sizes) == 2 else "trilinear"
    smooth = F.interpolate(coarse, size=sizes, mode=mode, align_corners=False)
    return smooth + 0.05 * torch.randn(smooth.shape, generator=generator)


def package_version(package: str) -> str:
    """An installed package's version, for a format's description ("not installed" if not)."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def require(what: str, *modules: str) -> None:
    """A one-line error naming the export extra when a module ``what`` needs is missing."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ToolboxError(f"{what} needs {module} ({error}); install the export extra: "
                               'pip install "denoise-toolbox[export]"') from error


def scripted_network(network: ExportableNetwork, example: tuple, info: ExportInfo,
                     estimate_level: bool = False) -> torch.jit.ScriptModule:
    """``network`` as TorchScript: its generator traced at ``example`` (a multiple of the size
    multiple, where every input takes the same path: ``size_multiple``) inside the scripted
    padding wrapper, so the padding follows each input's size.  ``estimate_level`` wraps it in
    ``EstimatedLevelNetwork`` (one input; the level measured inside)."""
    image = example[0]
    if info.noise_level_map:
        image = torch.cat([image, torch.zeros_like(image[:, :1])], dim=1)
    traced = torch.jit.trace(network.generator, image, check_trace=False)
    wrapper = ExportableNetwork(traced, info.spatial_dims, info.multiple, info.scale, info.noise_level_map)
    module = EstimatedLevelNetwork(wrapper, info.rician) if estimate_level else wrapper
    return torch.jit.script(module.eval())


def test_image(info: ExportInfo, seed: int = 0, image: Optional[np.ndarray] = None) -> tuple:
    """An input for checking an export: ``image`` (normalised, (C, *spatial)) when given, else
    a made one: smooth structure plus 5 % Gaussian noise, sized unlike the export's example
    (each side the patch size plus 3, so the padding inside is exercised)."""
    if image is None:
        tensor = made_image([int(p) + 3 for p in info.patch_size], info.channels * info.context_slices, seed)
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    noise_sd = torch.tensor([0.05], dtype=torch.float32) if info.noise_level_map else None
    return tensor, noise_sd


def compare(reference: np.ndarray, exported: np.ndarray) -> dict:
    """Largest absolute difference against ``RELATIVE_TOLERANCE`` of the reference's scale:
    the larger of its range and its largest magnitude (an untrained network's output can be
    nearly flat, so its range alone would ask for agreement below fp32 rounding)."""
    if reference.shape != exported.shape:
        return {"passed": False, "reason": f"output shape {list(exported.shape)}, expected {list(reference.shape)}"}
    spread = max(float(reference.max() - reference.min()), float(np.abs(reference).max())) or 1.0
    error = float(np.max(np.abs(reference.astype(np.float64) - exported)))
    tolerance = RELATIVE_TOLERANCE * spread
    return {"passed": bool(error <= tolerance), "max_abs_error": error, "tolerance": tolerance,
            "relative_tolerance": RELATIVE_TOLERANCE, "shape": list(reference.shape)}


def write_atomically(path: Path, overwrite: bool, make: Callable[[Path], None]) -> None:
    """``make(tmp)`` writes a file or folder at ``tmp``; it replaces ``path`` only when done,
    so a failed or refused export leaves nothing half-written (and an old file untouched)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ToolboxError(f"{path}: already exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        target = work / path.name
        make(target)
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_sidecar(path: Path, info: ExportInfo) -> Path:
    sidecar = Path(str(path) + ".json")
    sidecar.write_text(json.dumps(info.describe(), indent=2, default=str) + "\n", encoding="utf-8")
    return sidecar


# -- for formats that carry the toolbox's pre- and post-processing (MONAI Bundle, ...) ----

def pipeline_sources() -> dict[str, str]:
    """The source of the standalone modules that normalise an image and estimate its noise
    level exactly as ``toolbox denoise`` does (NumPy, SciPy and scikit-image only), for a
    format to ship beside its network: file name -> text."""
    import inspect

    import toolbox.data.normalize as normalize
    import toolbox.noise_estimation as noise_estimation

    return {"normalize.py": inspect.getsource(normalize), "noise_estimation.py": inspect.getsource(noise_estimation)}


def reference_denoise(network: ExportableNetwork, info: ExportInfo, units: np.ndarray, noise=None,
                      sigma: Optional[float] = None) -> np.ndarray:
    """What ``toolbox denoise`` makes of ``units`` ((C, *spatial), in the image's units) with
    ``network``'s generator: the same normalisation, noise-level estimate (``noise``: the
    recipe's ``data.noise``), sliding windows of the recipe's patch size (``toolbox denoise
    --window patch``; an export tiles that way) and slice-by-slice runs of a 2D model over a
    volume (along the last axis).  A format's own check."""
    from toolbox.infer import denoise_units

    slice_axis = units.ndim - 2 if units.ndim - 1 > info.spatial_dims else None
    return denoise_units(network.generator, info.spatial_dims, info.patch_size, info.normalize, units, slice_axis,
                         torch.device("cpu"), info.overlap, context=info.context_slices,
                         noise_level_map=info.noise_level_map, sigma=sigma, noise_spec=noise, window="patch")


# -- for formats whose users cannot give a noise level (Fiji, napari: BioImage Model Zoo) --

# Daubechies-2 decomposition high-pass filter (PyWavelets' ``db2.dec_hi``): the wavelet the
# toolbox's own estimate uses (scikit-image's ``estimate_sigma``), so that an export that
# measures the level itself tells the network what ``toolbox denoise`` would.
DB2_HIGH_PASS = (-0.48296291314453416, 0.8365163037378079, -0.2241438680420134, -0.12940952255126037)


def db2_diagonal_kernel() -> torch.Tensor:
    """The (1, 1, 4, 4) filter whose stride-2 correlation gives the finest diagonal
    Daubechies-2 detail (the high-pass filter, reversed, in both directions)."""
    high = torch.tensor(DB2_HIGH_PASS, dtype=torch.float32).flip(0)
    return (high[:, None] * high[None, :])[None, None]


def wavelet_noise_sd(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The noise SD of each image in a batch (N, C, *spatial), from the image alone: the
    median absolute finest diagonal Daubechies-2 coefficient (``kernel``:
    ``db2_diagonal_kernel()``) / 0.6745 (Donoho's estimator,
    as the toolbox's own), over every plane of the first channel.  A convolution and a
    top-k: graph operations every runtime has (ONNX, TorchScript).  A Haar wavelet is
    cheaper but reads fine structure as noise (on a real CT slice at 10 HU of noise it
    overstated the level enough to leave the image worse than its input)."""
    x = image[:, :1].float()
    batch = x.shape[0]
    planes = x.reshape(-1, 1, x.shape[-2], x.shape[-1])  # every z plane of a volume, too
    diagonal = F.conv2d(planes, kernel.to(planes.dtype), stride=2)
    flat = diagonal.abs().reshape(batch, -1)
    middle = flat.shape[1] // 2 + 1
    median = torch.topk(flat, middle, dim=1, largest=False).values[:, -1]
    return median / 0.6745




def background_noise_sd(image: torch.Tensor, gaussian: torch.Tensor) -> torch.Tensor:
    """The level a model trained on Rician (magnitude MR) noise is given, per image, as
    ``toolbox.noise_estimation.estimated_sigma`` chooses it: the background's Rayleigh
    estimate (second moment of the darkest tenth, then of the voxels under 3 sigma,
    corrected for that truncation; a fixed 30 rounds) when the image is non-negative, its
    darkest tenth lies within 3 Gaussian SDs of zero and the estimate is between 1 and 3
    times the Gaussian one; else ``gaussian``."""
    # Rayleigh background: E[x^2 | x < 3 sigma] = 2 sigma^2 * kept, kept = 1 - 4.5 e^-4.5 /
    # (1 - e^-4.5) (as toolbox.noise_estimation; a literal, which TorchScript compiles).
    kept_fraction = 0.949447932838815
    flat = image[:, :1].float().reshape(image.shape[0], -1)
    tenth = max(1, flat.shape[1] // 10)
    darkest = torch.topk(flat, tenth, dim=1, largest=False).values
    sigma = torch.sqrt((darkest**2).mean(dim=1) / 2).clamp(min=1e-12)
    for _ in range(30):
        kept = (flat <= 3 * sigma[:, None]).to(flat.dtype)
        sigma = torch.sqrt((flat**2 * kept).sum(dim=1) / kept.sum(dim=1).clamp(min=1) / (2 * kept_fraction))
        sigma = sigma.clamp(min=1e-12)
    background = (flat.min(dim=1).values >= 0) & (darkest[:, -1] < 3 * gaussian)
    plausible = (sigma > gaussian) & (sigma < 3 * gaussian)
    return torch.where(background & plausible, sigma, gaussian)


class EstimatedLevelNetwork(torch.nn.Module):
    """``ExportableNetwork`` that measures the noise level of each input itself (``wavelet_noise_sd``,
    and ``background_noise_sd`` for a model trained on Rician noise) when the generator is
    noise-conditional: one input, for hosts that cannot give a level."""

    def __init__(self, inner: ExportableNetwork, rician: bool = False):
        super().__init__()
        self.inner = inner
        self.rician = bool(rician)
        # Not in the state dict: a constant of the estimator, rebuilt with the module.
        self.register_buffer("wavelet", db2_diagonal_kernel(), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.inner.noise_level_map:
            level = wavelet_noise_sd(image, self.wavelet)
            if self.rician:
                level = background_noise_sd(image, level)
            return self.inner(image, level)
        return self.inner(image, None)
