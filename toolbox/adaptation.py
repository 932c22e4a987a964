"""Test-time adaptation: tune a pretrained denoiser to the one noisy image it is given.

A model trained on a few images meets an image unlike them (other anatomy, scanner, noise
level); BM3D / BM4D win there because they draw on the image's own self-similarity.  This
gives the network the same advantage: before denoising, the gain of every output channel
of every convolution (GainTuning: Mohan et al., NeurIPS 2021) is tuned on the noisy image
itself to minimise Stein's unbiased risk estimate (SURE; Stein 1981), an estimate of the
mean squared error against the clean image that needs only the noisy one and the SD of its
white Gaussian noise.  The divergence in SURE is estimated by Monte-Carlo (one random probe
per step: Ramani, Blu and Unser 2008).

Only one number per channel moves (a few thousand in all), not the weights.  Still, gains
tuned on some voxels fit those voxels' noise a little, and SURE computed on the same voxels
cannot see that (it holds for a network fixed before the noise was drawn): on a 128x128
slice at 600 HU it promised +0.7 dB for a tuning that cost 1.0.  So the image is split in
two halves along its longest axis: the gains are tuned on windows of one and checked, with
SURE over fixed windows and probes, on the other, whose noise they never saw; they are
kept only when that says they help by more than SURE's own uncertainty, and then denoise
that other half.  An image the tuning does not help is denoised by the pretrained network
as it was.

SURE holds for white Gaussian noise (for magnitude MR, Rician, it is a fair approximation
where the signal is a few noise SDs above zero), and only for it: the tuning minimises SURE,
so where SURE is wrong it drives the network wrong, and the check, which uses SURE too,
does not see it.  Measured on the `ct` model: on simulated low-dose CT (correlated noise
from filtered back-projection) SURE promised +2.2 dB for a tuning that cost 6.0; on the
`fluorescence` model's camera images its heteroscedastic (photon-noise) form promised +6 dB
for tunings that cost 0.3-5.6.  Hence two guards: models trained on other noise are refused
(``check_adaptable``), and an image whose noise does not look white is left alone: the
residual of the pretrained network (noisy - denoised, mostly noise) must be uncorrelated
between neighbouring voxels (``noise_correlation``; white noise gives |r| <= 0.05 on the
held-out CT and MR, FBP noise 0.1-0.4, Rician MR 0.26-0.31, its background's bias
making the residual smooth).  Real scanners' CT noise is correlated and magnitude MR's is
Rician, so on such scans adaptation mostly declines: it helps where the noise is white.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from toolbox.nn import first_output

CONVOLUTIONS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
                torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
# Windows tuned on: large enough for the network's context, small enough for a fast step.
WINDOW = {2: 128, 3: 48}
LEARNING_RATE = 3e-3
CHECK_WINDOWS = 8
# SURE is itself noisy (on a 64x128 half-slice at 200 HU its error is a third of the MSE):
# tuned gains are kept only when the improvement it estimates is this many standard errors
# (over blocks of BLOCK voxels per axis, noise being independent between blocks) above 0.
SIGNIFICANCE = 2.0
BLOCK = {2: 8, 3: 4}
# Noise models SURE holds for (Gaussian) or approximates well (Rician).
SURE_NOISE = ("gaussian", "rician")
# The largest correlation between neighbouring voxels (1 and 2 apart along any axis) of the
# pretrained network's residual that still counts as white noise.
WHITE_CORRELATION = 0.1
# Each half must be at least this many voxels across along the split axis.
SMALLEST_HALF = 8


@dataclass(frozen=True)
class Adaptation:
    """What tuning did to one image: SURE (an MSE estimate, normalised units squared) on the
    check windows without and with the gains in use, and on how many of the image's halves
    (0, 1, 2) tuned gains were kept."""

    steps: int
    risk_before: float
    risk_after: float
    kept: int
    declined: str = ""  # why the image was not tuned at all (its noise is not white)

    @property
    def estimated_db(self) -> float:
        """The PSNR gain SURE predicts for the tuned gains (negative: they would hurt)."""
        return float(10 * np.log10(max(self.risk_before, 1e-20) / max(self.risk_after, 1e-20)))

    def describe(self) -> str:
        if self.declined:
            return f"not adapted: {self.declined}"
        verdict = {0: "not kept: the pretrained network is used as it is", 1: "kept on one half of the image",
                   2: "kept"}.get(self.kept, "kept")
        return (f"adapted over {self.steps} steps per half: PSNR {self.estimated_db:+.2f} dB estimated (SURE), "
                f"{verdict}")


def check_adaptable(generator: torch.nn.Module, recipe: dict) -> str | None:
    """Why ``--adapt`` cannot tune this model, or None when it can."""
    from toolbox.noise_estimation import noise_types

    other = noise_types(recipe["data"].get("noise")) - set(SURE_NOISE)
    if other:
        return (f"test-time adaptation estimates the error with SURE, which needs white Gaussian (or Rician) "
                f"noise; this model was trained for {', '.join(sorted(other))} noise")
    if int(recipe["data"].get("scale", 1)) != 1:
        return "test-time adaptation needs the output on the input's grid; this model also upsamples"
    if getattr(generator, "fixed_input_size", False) or hasattr(generator, "in_units_of"):
        return "this model denoises by latent search; test-time adaptation tunes image-to-image networks"
    if not any(isinstance(m, CONVOLUTIONS) for m in generator.modules()):
        return "test-time adaptation tunes the gains of convolutions, and this network has none"
    return None


class ChannelGains:
    """A learnable gain on every output channel of every convolution of ``network``, applied
    by forward hooks while the ``with`` block lasts (the weights are never changed)."""

    def __init__(self, network: torch.nn.Module):
        self.gains: list[torch.nn.Parameter] = []
        self._hooks = []
        for module in network.modules():
            if isinstance(module, CONVOLUTIONS):
                weight = module.weight
                gain = torch.nn.Parameter(torch.ones(module.out_channels, device=weight.device, dtype=weight.dtype))
                self.gains.append(gain)
                self._hooks.append(module.register_forward_hook(self._scaled(gain)))

    @staticmethod
    def _scaled(gain):
        def hook(module, inputs, output):
            return output * gain.view(1, -1, *([1] * (output.ndim - 2)))
        return hook

    def reset(self) -> None:
        with torch.no_grad():
            for gain in self.gains:
                gain.fill_(1.0)

    def __enter__(self) -> "ChannelGains":
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


def sure(network: torch.nn.Module, window: torch.Tensor, sigma: float, probe: torch.Tensor,
         target: list[int]) -> torch.Tensor:
    """Monte-Carlo SURE of ``network`` on one noisy ``window`` ``(1, C, *spatial)``: the
    estimated MSE of its output against the unseen clean image, per voxel, for white
    Gaussian noise of SD ``sigma``.

    ``target``: the input channels the output channels denoise (a 2.5D model takes
    neighbouring slices as well, and returns the middle one); ``probe`` is a standard
    normal field on those channels for the divergence."""
    return sure_map(network, window, sigma, probe, target).mean()


def sure_map(network: torch.nn.Module, window: torch.Tensor, sigma: float, probe: torch.Tensor,
             target: list[int]) -> torch.Tensor:
    """``sure``'s terms voxel by voxel (their mean is SURE), for its standard error."""
    v = float(sigma) ** 2
    epsilon = max(float(sigma), 1e-4) * 1e-2
    shifted = window.clone()
    shifted[:, target] = shifted[:, target] + epsilon * probe
    # One batch of two rather than two calls: in 3D a batch of one takes PyTorch's slow
    # native convolutions for thin layers (oneDNN only from batch 2), 2.4x slower per step.
    both = first_output(network(torch.cat([window, shifted])))
    denoised, moved = both[:len(window)], both[len(window):]
    divergence = probe * (moved - denoised) / epsilon
    residual = window[:, target] - denoised
    return residual ** 2 - v + 2 * v * divergence


def split_axis(spatial_shape, model_dims: int, slice_axis: int | None) -> int:
    """The spatial axis the image is cut in half along: its longest, or for a 2D model on a
    volume the longest axis of its slices."""
    axes = list(range(len(spatial_shape)))
    if len(spatial_shape) > model_dims:
        axes.remove(0 if slice_axis is None else slice_axis)
    return max(axes, key=lambda axis: spatial_shape[axis])


def half_mask(spatial_shape, axis: int, half: int) -> np.ndarray:
    """A boolean mask, broadcastable to ``(C, *spatial_shape)``, of one half along ``axis``."""
    middle = spatial_shape[axis] // 2
    index = np.arange(spatial_shape[axis])
    inside = index < middle if half == 0 else index >= middle
    return inside.reshape([1] + [-1 if a == axis else 1 for a in range(len(spatial_shape))])


class WindowSampler:
    """Random windows of one half (``half`` 0 or 1, along ``split_axis``) of a normalised
    image ``(C, *spatial)`` as the network takes them: crops of the image, or for a 2D model
    on a volume crops of a random slice (with its neighbours for a 2.5D model)."""

    def __init__(self, image: np.ndarray, model_dims: int, slice_axis: int | None, context: int, half: int,
                 seed: int = 0):
        spatial = image.shape[1:]
        self.image = image
        self.model_dims = model_dims
        self.slice_axis = (0 if slice_axis is None else slice_axis) if len(spatial) > model_dims else None
        self.context = context
        self.random = np.random.default_rng(seed)
        axis = split_axis(spatial, model_dims, slice_axis)
        middle = spatial[axis] // 2
        self.bounds = [(0, n) for n in spatial]
        self.bounds[axis] = (0, middle) if half == 0 else (middle, spatial[axis])
        if self.slice_axis is not None:
            self.bounds.pop(self.slice_axis)
        channels = image.shape[0]
        self.target = [c * context + context // 2 for c in range(channels)] if context > 1 else list(range(channels))

    def __call__(self) -> torch.Tensor:
        """One window at a random place in the half."""
        index = None
        if self.slice_axis is not None:
            index = int(self.random.integers(self.image.shape[self.slice_axis + 1]))
        starts = []
        for low, high in self.bounds:
            size = min(WINDOW[self.model_dims], high - low)
            starts.append(low + int(self.random.integers(0, high - low - size + 1)))
        return self._window(index, starts)

    def tiles(self, limit: int) -> list[torch.Tensor]:
        """Up to ``limit`` windows that do not overlap (so their noise is independent),
        picked at random from a grid over the half (and over the slices)."""
        sizes = [min(WINDOW[self.model_dims], high - low) for low, high in self.bounds]
        grids = [range(low, high - size + 1, size) for (low, high), size in zip(self.bounds, sizes)]
        slices = range(self.image.shape[self.slice_axis + 1]) if self.slice_axis is not None else [None]
        places = [(index, list(starts)) for index in slices for starts in np.ndindex(*[len(g) for g in grids])]
        chosen = self.random.permutation(len(places))[:limit]
        return [self._window(places[i][0], [g[k] for g, k in zip(grids, places[i][1])]) for i in sorted(chosen)]

    def _window(self, index, starts) -> torch.Tensor:
        from toolbox.slicing import slice_with_context

        plane = self.image
        if index is not None:
            plane = slice_with_context(self.image, self.slice_axis, index, self.context)
        spans = [slice(start, start + min(WINDOW[self.model_dims], high - low))
                 for start, (low, high) in zip(starts, self.bounds)]
        crop = plane[(slice(None),) + tuple(spans)]
        return torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32)).unsqueeze(0)


def adapt_gains(network: torch.nn.Module, gains: ChannelGains, tune: WindowSampler, check: WindowSampler,
                sigma: float, steps: int, device: torch.device, seed: int = 0,
                learning_rate: float = LEARNING_RATE, on_step=None) -> Adaptation:
    """Tune ``gains`` (attached to the convolutions inside ``network``) for ``steps`` steps
    on windows from ``tune`` (noise SD ``sigma``, normalised units), then keep them only if
    SURE over fixed windows from ``check`` (voxels whose noise they never saw) says they
    help by more than its own uncertainty; else they are reset to 1.  ``on_step(n)`` is
    told after each step how many are done."""
    probes = torch.Generator().manual_seed(seed)

    def probe_like(window):
        shape = (1, len(tune.target), *window.shape[2:])
        return torch.randn(shape, generator=probes).to(device)

    checks = [w.to(device) for w in check.tiles(CHECK_WINDOWS)]
    check_probes = [probe_like(w) for w in checks]
    pool = {1: torch.nn.functional.avg_pool1d, 2: torch.nn.functional.avg_pool2d,
            3: torch.nn.functional.avg_pool3d}

    def check_blocks() -> torch.Tensor:
        """SURE's voxel terms on the check windows, averaged over blocks."""
        blocks = []
        with torch.no_grad():
            for window, probe in zip(checks, check_probes):
                terms = sure_map(network, window, sigma, probe, tune.target)
                dims = terms.ndim - 2
                size = [min(BLOCK.get(dims, 4), n) for n in terms.shape[2:]]
                blocks.append(pool[dims](terms, size).flatten())
        return torch.cat(blocks).double()

    was_training = network.training
    network.eval()  # normalisation layers keep their statistics; only the gains learn
    frozen = [p for p in network.parameters() if p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(False)
    try:
        before = check_blocks()
        optimiser = torch.optim.Adam(gains.gains, lr=learning_rate)
        for step in range(steps):
            window = tune().to(device)
            loss = sure(network, window, sigma, probe_like(window), tune.target)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if on_step is not None:
                on_step(step + 1)
        after = check_blocks()
        change = after - before
        error = float(change.std()) / max(1, change.numel() - 1) ** 0.5
        kept = float(change.mean()) < -SIGNIFICANCE * error
        if not kept:
            gains.reset()
        return Adaptation(steps, float(before.mean()), float(after.mean()), int(kept))
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)
        network.train(was_training)


def noise_correlation(residual: np.ndarray, model_dims: int, slice_axis: int | None) -> float:
    """The largest correlation (in absolute value) between voxels 1 and 2 apart along any
    axis the model sees of ``residual`` ``(C, *spatial)``: about 0 for white noise."""
    spatial = residual.shape[1:]
    axes = [a for a in range(len(spatial))
            if len(spatial) == model_dims or a != (0 if slice_axis is None else slice_axis)]
    centred = residual - residual.mean(axis=tuple(range(1, residual.ndim)), keepdims=True)
    power = float(np.mean(centred.astype(np.float64) ** 2))
    if power <= 0:
        return 0.0
    largest = 0.0
    for axis in axes:
        for lag in (1, 2):
            if spatial[axis] <= lag:
                continue
            ahead = np.take(centred, np.arange(lag, spatial[axis]), axis=axis + 1)
            behind = np.take(centred, np.arange(spatial[axis] - lag), axis=axis + 1)
            largest = max(largest, abs(float(np.mean(ahead.astype(np.float64) * behind)) / power))
    return largest


class StagedProgress:
    """One count over ``cross_fitted``'s stages, reported as ``report(done, total)`` like a
    plain pass's windows: the plain pass, then per half its tuning steps and the pass with
    the tuned gains (W windows per pass, known once the first pass reports; S steps per
    half: 3 W + 2 S in all).  A stage that does not run (a half whose gains were not kept,
    a declined image) is counted as done, so the bar never restarts or goes back."""

    def __init__(self, report, steps: int):
        self.report, self.steps = report, steps
        self.windows, self.done_before = 1, 0  # per pass; units of finished stages

    @property
    def total(self) -> int:
        return 3 * self.windows + 2 * self.steps

    def windows_done(self, done: int, total: int) -> None:
        """A pass's own progress (``denoise_array``'s callback)."""
        self.windows = max(1, total)
        self._show(self.done_before + done)

    def steps_done(self, done: int) -> None:
        self._show(self.done_before + done)

    def finish(self, units: int) -> None:
        self.done_before += units
        self._show(self.done_before)

    def complete(self) -> None:
        self.done_before = self.total
        self._show(self.total)

    def _show(self, done: int) -> None:
        if self.report is not None:
            self.report(min(done, self.total), self.total)


def cross_fitted(generator: torch.nn.Module, network: torch.nn.Module, image: np.ndarray, model_dims: int,
                 slice_axis: int | None, context: int, sigma: float, steps: int, device: torch.device,
                 denoise, progress=None) -> tuple[np.ndarray, Adaptation]:
    """``denoise(network, report)`` of the normalised ``image`` with gains tuned to it,
    cross-fitted: gains tuned on one half denoise the other half, so that no voxel is
    denoised by gains that saw its noise.  ``generator`` holds the convolutions; ``network``
    is what takes windows (the generator with its noise-level input).  An image whose noise
    does not look white (``noise_correlation`` of the pretrained network's residual) is
    denoised as it is.  ``progress(done, total)`` follows every pass and tuning step as one
    count (``StagedProgress``); ``denoise`` passes ``report`` on to its windows."""
    stages = StagedProgress(progress, steps)
    plain = denoise(network, stages.windows_done)
    stages.finish(stages.windows)
    spatial = image.shape[1:]
    axis = split_axis(spatial, model_dims, slice_axis)
    if spatial[axis] < 2 * SMALLEST_HALF:
        stages.complete()
        return plain, Adaptation(0, 0.0, 0.0, 0, declined=(
            f"the image is {spatial[axis]} voxels across at most, too small to tune on one half and check on "
            f"the other (at least {2 * SMALLEST_HALF})"))
    correlation = noise_correlation(image - plain, model_dims, slice_axis)
    if correlation > WHITE_CORRELATION:
        stages.complete()
        return plain, Adaptation(0, 0.0, 0.0, 0, declined=(
            f"the noise does not look white (neighbouring voxels of the network's residual correlate at "
            f"{correlation:.2f}, white noise <= {WHITE_CORRELATION}); SURE would mislead the tuning"))
    result, verdicts = plain, []
    for half in (0, 1):
        tune = WindowSampler(image, model_dims, slice_axis, context, half, seed=half)
        check = WindowSampler(image, model_dims, slice_axis, context, 1 - half, seed=2 + half)
        with ChannelGains(generator) as gains:
            verdict = adapt_gains(network, gains, tune, check, sigma, steps, device, seed=half,
                                  on_step=stages.steps_done)
            stages.finish(steps)
            if verdict.kept:  # gains back at 1 give the plain output, already at hand
                result = np.where(half_mask(spatial, axis, 1 - half), denoise(network, stages.windows_done), result)
            stages.finish(stages.windows)
        verdicts.append(verdict)
    stages.complete()
    before = float(np.mean([v.risk_before for v in verdicts]))
    after = float(np.mean([v.risk_after if v.kept else v.risk_before for v in verdicts]))
    return result, Adaptation(steps, before, after, sum(v.kept for v in verdicts))
