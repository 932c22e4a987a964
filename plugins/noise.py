"""Synthetic noise models on normalised images (0..1 = the recipe's intensity window).

Each model is ``noise(clean, generator) -> noisy``; the generator is the only source of
randomness.  A level given as ``[low, high]`` is drawn per sample (uniformly), so a model
learns to denoise blind to the level, as ADL and most practical denoisers train.
"""

from __future__ import annotations

import math

import torch

import toolbox


DRAWS = ("uniform", "log")


def _level(value, generator: torch.Generator, draw: str = "uniform") -> float:
    """A fixed level, or one drawn from ``[low, high]``: uniformly, or log-uniformly
    (``draw: log``, as many samples between 0.01 and 0.1 as between 0.1 and 1, so that
    weak noise, the clinical kind, is not a small corner of training)."""
    if isinstance(value, (list, tuple)):
        low, high = float(value[0]), float(value[1])
        u = float(torch.rand((), generator=generator))
        if draw == "log":
            return math.exp(math.log(low) + (math.log(high) - math.log(low)) * u)
        return low + (high - low) * u
    return float(value)


def _check_draw(draw: str, *ranges) -> str:
    if draw not in DRAWS:
        raise ValueError(f"draw must be {' or '.join(DRAWS)}, got {draw!r}")
    if draw == "log" and any(isinstance(r, (list, tuple)) and float(r[0]) <= 0 for r in ranges):
        raise ValueError("draw: log needs a range whose low end is above 0")
    return draw


def _check_level(name: str, value, positive=True) -> None:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if isinstance(value, (list, tuple)) and (len(values) != 2 or values[0] > values[1]):
        raise ValueError(f"{name} as a range must be [low, high], got {value!r}")
    if any((v <= 0 if positive else v < 0) for v in values):
        raise ValueError(f"{name} must be {'positive' if positive else 'non-negative'}, got {value!r}")


class GaussianNoise:
    """Additive white Gaussian noise, ``sigma`` in normalised units (or a [low, high] range).

    ``clip: true`` clips the result to 0..1, as 8-bit images are (the pix2pix CT seed).
    ``draw: log`` draws a range log-uniformly.
    """

    def __init__(self, sigma=0.1, clip: bool = False, draw: str = "uniform"):
        _check_level("sigma", sigma, positive=False)
        self.sigma, self.clip, self.draw = sigma, clip, _check_draw(draw, sigma)

    def __call__(self, clean, generator):
        sigma = _level(self.sigma, generator, self.draw)
        noisy = clean + sigma * torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
        return noisy.clamp(0, 1) if self.clip else noisy


class PoissonNoise:
    """Shot noise: counts ~ Poisson(peak * clean), returned as counts / peak.

    ``peak`` is the photon count at intensity 1 (lower = noisier), or a [low, high] range.
    """

    def __init__(self, peak=30.0, draw: str = "uniform"):
        _check_level("peak", peak)
        self.peak, self.draw = peak, _check_draw(draw, peak)

    def __call__(self, clean, generator):
        peak = _level(self.peak, generator, self.draw)
        return torch.poisson(clean.clamp(min=0) * peak, generator=generator) / peak

    def photons(self):
        """``(photons at level 1, read SD)`` when fixed (a range has no single value)."""
        return None if isinstance(self.peak, (list, tuple)) else (float(self.peak), 0.0)


class PoissonGaussianNoise:
    """Shot noise plus read-out noise (microscopy cameras): Poisson(peak) then Gaussian(sigma)."""

    def __init__(self, peak=30.0, sigma=0.02, draw: str = "uniform"):
        _check_level("peak", peak)
        _check_level("sigma", sigma, positive=False)
        self.poisson = PoissonNoise(peak, draw)
        self.sigma, self.draw = sigma, _check_draw(draw, sigma)

    def photons(self):
        shot = self.poisson.photons()
        if shot is None or isinstance(self.sigma, (list, tuple)):
            return None
        return shot[0], float(self.sigma)

    def __call__(self, clean, generator):
        shot = self.poisson(clean, generator)
        sigma = _level(self.sigma, generator, self.draw)
        return shot + sigma * torch.randn(clean.shape, generator=generator, dtype=clean.dtype)


class RicianNoise:
    """Rician noise of magnitude MR: |clean + n1 + i n2| with n1, n2 ~ N(0, sigma)."""

    def __init__(self, sigma=0.05, draw: str = "uniform"):
        _check_level("sigma", sigma, positive=False)
        self.sigma, self.draw = sigma, _check_draw(draw, sigma)

    def __call__(self, clean, generator):
        sigma = _level(self.sigma, generator, self.draw)
        real = clean + sigma * torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
        imag = sigma * torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
        return torch.sqrt(real**2 + imag**2)


class NoiseMixture:
    """One of several noise models per sample (``of``: their specs; ``weights``: how often
    each is drawn, equal by default), so that one model learns, for example, both the
    Rician noise of magnitude MR and the Gaussian noise that benchmarks add to it."""

    def __init__(self, of, weights=None):
        if not isinstance(of, (list, tuple)) or len(of) < 2:
            raise ValueError("of must list at least two noise models, e.g. [{type: gaussian, sigma: 0.1}, "
                             "{type: rician, sigma: 0.1}]")
        if any(isinstance(spec, dict) and spec.get("type") == "mixture" for spec in of):
            raise ValueError("a mixture cannot contain another mixture")
        registry = toolbox.plugin_registry()
        try:
            self.models = [registry.build("noise_models", spec, None, f"of[{i}]") for i, spec in enumerate(of)]
        except toolbox.RecipeError as error:  # the registry adds where the mixture sits
            raise ValueError(str(error)) from None
        if any(getattr(m, "units", None) == "native" or getattr(m, "identity", False) for m in self.models):
            raise ValueError("a mixture takes noise models on normalised images (not camera or none)")
        weights = [1.0] * len(of) if weights is None else [float(w) for w in weights]
        if len(weights) != len(of) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be {len(of)} non-negative numbers, not all 0, got {weights!r}")
        self.weights = torch.tensor(weights, dtype=torch.float64)

    def __call__(self, clean, generator):
        pick = int(torch.multinomial(self.weights, 1, generator=generator))
        return self.models[pick](clean, generator)


class AlreadyNoisy:
    """No noise added: the training images are noisy already (real acquisitions), for
    schemes that learn without clean targets (``noise2void``; ``noise2noise`` with pairs)."""

    identity = True  # the contract check expects the image back unchanged

    def __call__(self, clean, generator):
        return clean.clone()


class CameraNoise:
    """A calibrated camera or detector, in the image's own units (ADU): ``gain`` ADU per
    photo-electron, ``offset`` (the dark level), read noise ``read_sd`` (ADU), values
    rounded to integers (``quantize``) and clipped to ``0..saturation``.

    The clean image is the signal ``offset + gain * electrons``; the noisy one is ``offset +
    gain * Poisson(exposure * electrons) / exposure + N(0, read_sd)``: ``exposure`` below 1
    simulates a dimmer acquisition of the same scene.  ``toolbox noise estimate`` measures
    ``gain`` and the read noise from one of the user's images.
    """

    units = "native"  # applied in the image's own units (see toolbox.hookspecs)

    def __init__(self, gain: float = 1.0, offset: float = 0.0, read_sd: float = 2.0, exposure=1.0,
                 saturation: float | None = None, quantize: bool = True):
        _check_level("gain", gain)
        _check_level("read_sd", read_sd, positive=False)
        _check_level("exposure", exposure)
        if saturation is not None and saturation <= offset:
            raise ValueError(f"saturation ({saturation}) must be above the offset ({offset})")
        self.gain, self.offset, self.read_sd = float(gain), float(offset), read_sd
        self.exposure, self.saturation, self.quantize = exposure, saturation, quantize

    def __call__(self, clean, generator):
        exposure = _level(self.exposure, generator)
        electrons = ((clean - self.offset) / self.gain).clamp(min=0) * exposure
        shot = torch.poisson(electrons.double(), generator=generator).to(clean.dtype) / exposure
        read = _level(self.read_sd, generator) * torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
        noisy = self.offset + self.gain * shot + read
        if self.quantize:
            noisy = torch.round(noisy)
        return noisy.clamp(0, self.saturation) if self.saturation is not None else noisy.clamp(min=0)


@toolbox.hookimpl
def register_noise_models(register):
    register("gaussian", GaussianNoise, aliases=("awgn",))
    register("poisson", PoissonNoise)
    register("poisson_gaussian", PoissonGaussianNoise)
    register("rician", RicianNoise)
    register("mixture", NoiseMixture, example={"of": [{"type": "gaussian", "sigma": 0.1},
                                                      {"type": "rician", "sigma": 0.1}]})
    register("none", AlreadyNoisy, aliases=("already_noisy",))
    register("camera", CameraNoise, aliases=("calibrated_poisson_gaussian",),
             example={"gain": 0.01, "offset": 0.1, "read_sd": 0.01, "quantize": False})
