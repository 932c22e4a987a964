"""Denoising with a generator that draws images from latent vectors (a DCGAN prior, seed 001).

Such a generator never sees a noisy image: to denoise one, the latent space is searched for
the image the generator can draw that best explains the noisy one (seed 001, Algorithm 2,
after Creswell & Bharath / Lipton & Tripathi):

1. ``starts`` latent vectors drawn from N(0, 1) are optimised together for ``steps`` steps
   of Adam (the seed found Adam at 0.01 best) on the data term;
2. the one with the lowest loss is optimised further, for up to ``max_steps`` steps or until
   its loss falls below ``eps``;
3. the denoised image is the generator's image of the best latent found.

The data term is the mean squared error (Gaussian noise, or no assumption), or the Poisson
negative log-likelihood when the image is a count image (electron or photon counts): with
``counts_per_unit`` counts per unit of the image's intensity, a pixel of intensity ``y``
observed where the generator draws ``x`` costs ``c x - c y log(c x)`` (up to a constant).
An optional ``prior`` weight adds ``prior * mean(z^2)``, the negative log-density of the
N(0, 1) latent, which keeps the search where the generator was trained.

The generator's image is the method's answer when the generator can draw the clean image.
When it cannot (a micrograph whose lattice and carbon texture no latent reproduces; a
training set of a few dozen images), the search returns the closest image the generator
can draw, which at weak noise is further from the truth than the noisy input.
``residual: shrink`` (not in the seed) adds back the part of the residual ``r = noisy -
G(z)`` that is more than noise: ``G(z) + a r`` with ``a = max(0, 1 - v / mean(r^2))`` per
window, ``v`` the noise variance (from the counts for the Poisson term; else ``sigma`` in
the image's units, or the image's wavelet estimate).  That ``a`` is the scalar Wiener
gain: the expected error is at most the smaller of the noisy input's and the generator's
(for noise independent of the generator's error), so weak noise is left nearly as it is
and strong noise gets the generator's image.

``LatentInversion`` is an ``nn.Module`` that takes a batch of (normalised) noisy windows of
the generator's size and returns the images, so ``toolbox denoise``, ``toolbox evaluate``
and validation tile larger images with the sliding windows every model uses.  It runs the
search with gradients on even inside ``torch.no_grad()`` (inference), and never changes the
generator's weights.
"""

from __future__ import annotations

import time

import torch

from toolbox.distributed import unwrap

LOSSES = ("mse", "poisson")
RESIDUALS = ("none", "shrink")
#: The settings of a search (a recipe's ``inversion`` section, ``--inversion``).
INVERSION_KEYS = ("starts", "steps", "max_steps", "eps", "lr", "loss", "counts_per_unit", "prior", "seed",
                  "residual", "sigma")

# Where the generator draws (almost) no intensity, the Poisson likelihood of a count there is
# unbounded: the rate is kept above this many counts in the likelihood.
RATE_FLOOR = 1e-3


def is_latent_generator(network: torch.nn.Module) -> bool:
    """Whether ``network`` draws images from latent vectors (it has ``latent_dim``)."""
    return bool(getattr(unwrap(network), "latent_dim", None))


def poisson_nll(prediction: torch.Tensor, noisy: torch.Tensor, counts_per_unit: float) -> torch.Tensor:
    """Per-sample Poisson negative log-likelihood, averaged over the pixels, of counts
    ``k = c * noisy`` observed where the rate is ``c * prediction``, measured from that of
    the counts themselves (half the Poisson deviance): ``rate - k - k log(rate / k)``, which
    is 0 where the rate equals the count and positive elsewhere, so that ``eps`` means the
    same as for the squared error (without the offset the likelihood is negative and any
    ``eps`` >= 0 would stop the search at once).  Its gradient with respect to a pixel of
    ``prediction`` is ``c (1 - noisy / prediction)`` divided by the pixel count (where the
    rate is above ``RATE_FLOOR`` counts)."""
    c = float(counts_per_unit)
    rate = (c * prediction).clamp(min=RATE_FLOOR)
    counts = (c * noisy).clamp(min=0)
    # k log k -> 0 as k -> 0: a pixel with no counts costs its rate.
    saturated = torch.where(counts > 0, counts * torch.log(counts.clamp(min=RATE_FLOOR)), torch.zeros_like(counts))
    nll = rate - counts - counts * torch.log(rate) + saturated
    return nll.flatten(1).mean(1)


def mse(prediction: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error."""
    return (prediction - noisy).pow(2).flatten(1).mean(1)


class LatentInversion(torch.nn.Module):
    """A latent generator turned into a denoiser by searching its latent space (see module).

    ``forward(noisy)`` takes ``(N, C, *image_size)`` windows in the generator's normalised
    units and returns ``(N, C, *image_size)``; all windows (and all their starts) are
    searched in one batch.  ``seconds`` and ``windows`` count the work done, for reports.
    """

    fixed_input_size = True  # the generator draws images of one size: windows are never grown

    def __init__(self, generator: torch.nn.Module, starts: int = 8, steps: int = 100, max_steps: int = 300,
                 eps: float = 0.0, lr: float = 0.01, loss: str = "mse", counts_per_unit: float | None = None,
                 prior: float = 0.0, seed: int = 0, residual: str = "none", sigma: float | None = None):
        super().__init__()
        if not is_latent_generator(generator):
            raise ValueError("latent inversion needs a generator that draws images from latent vectors "
                             "(with latent_dim), e.g. dcgan_generator")
        if loss not in LOSSES:
            raise ValueError(f"inversion loss must be {' or '.join(LOSSES)}, got {loss!r}")
        if loss == "poisson" and not (counts_per_unit and counts_per_unit > 0):
            raise ValueError("inversion loss 'poisson' needs counts_per_unit: the counts per unit of the "
                             "image's intensity (1 when the image is in counts)")
        for name, value, least in (("starts", starts, 1), ("steps", steps, 0), ("max_steps", max_steps, 0)):
            if int(value) < least:
                raise ValueError(f"inversion {name} must be at least {least}, got {value}")
        if not lr > 0:
            raise ValueError(f"inversion lr must be positive, got {lr}")
        if residual not in RESIDUALS:
            raise ValueError(f"inversion residual must be {' or '.join(RESIDUALS)}, got {residual!r}")
        if sigma is not None and not float(sigma) >= 0:
            raise ValueError(f"inversion sigma must be a non-negative noise SD in the image's units, got {sigma}")
        self.generator = generator
        self.latent_dim = int(unwrap(generator).latent_dim)
        self.starts, self.steps, self.max_steps = int(starts), int(steps), int(max_steps)
        self.eps, self.lr, self.loss, self.prior, self.seed = float(eps), float(lr), loss, float(prior), int(seed)
        self.counts_per_unit = None if counts_per_unit is None else float(counts_per_unit)
        self.residual, self.sigma = residual, None if sigma is None else float(sigma)
        # The image's units per normalised unit and its offset, and its noise SD in
        # normalised units when known (set per image by denoise; until then the image's
        # units are the normalised ones).
        self.intensity_scale, self.intensity_offset, self.noise_sd = 1.0, 0.0, self.sigma
        self.seconds, self.windows = 0.0, 0

    def in_units_of(self, normalizer, units=None) -> LatentInversion:
        """This inversion for an image normalised by ``normalizer`` (``toolbox.data``'s: the
        image is ``normalised * scale + offset``): the Poisson term counts in the image's
        units, and the residual correction takes ``sigma`` (or the estimate of ``units``,
        the whole image in its units) in normalised units."""
        self.intensity_scale, self.intensity_offset = float(normalizer.scale), float(normalizer.offset)
        self.noise_sd = None
        if self.residual == "shrink" and self.loss != "poisson":
            if self.sigma is None and units is not None:
                from toolbox.noise_estimation import estimated_sigma

                self.noise_sd = estimated_sigma(units) / self.intensity_scale
            elif self.sigma is not None:
                self.noise_sd = self.sigma / self.intensity_scale
        return self

    def noise_variance(self, noisy: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor:
        """Per-window noise variance (normalised units) for the residual correction."""
        if self.loss == "poisson":  # a count's variance is its mean: c x counts, x / c in units
            units = (drawn * self.intensity_scale + self.intensity_offset).clamp(min=0)
            return (units / self.counts_per_unit).flatten(1).mean(1) / self.intensity_scale**2
        if self.noise_sd is not None:
            return torch.full((noisy.shape[0],), self.noise_sd**2, device=noisy.device)
        from toolbox.noise_estimation import estimate_gaussian

        windows = noisy.detach().cpu().numpy()
        return torch.tensor([estimate_gaussian(w).sigma ** 2 for w in windows], device=noisy.device)

    def corrected(self, noisy: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor:
        """``drawn + a (noisy - drawn)`` with the scalar Wiener gain ``a`` of each window."""
        residual = noisy - drawn
        power = residual.pow(2).flatten(1).mean(1)
        gain = (1 - self.noise_variance(noisy, drawn) / power.clamp(min=1e-20)).clamp(0, 1)
        return drawn + gain.reshape(-1, *[1] * (noisy.ndim - 1)) * residual

    def data_term(self, prediction: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
        """Per-sample loss of ``prediction`` given ``noisy`` (normalised units)."""
        if self.loss == "poisson":
            scale, offset = self.intensity_scale, self.intensity_offset
            return poisson_nll(prediction * scale + offset, noisy * scale + offset, self.counts_per_unit)
        return mse(prediction, noisy)

    def objective(self, latent: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
        """Per-sample loss of the latents (data term + prior)."""
        loss = self.data_term(self.generator(latent).float(), noisy)
        if self.prior:
            loss = loss + self.prior * latent.pow(2).mean(1)
        return loss

    def descend(self, latent: torch.Tensor, noisy: torch.Tensor, steps: int, eps: float | None = None):
        """Up to ``steps`` Adam steps on every latent at once; returns the best latent each
        sample reached and its loss (stopping early once every sample's is below ``eps``)."""
        latent = latent.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([latent], lr=self.lr)
        best = latent.detach().clone()
        best_loss = torch.full((latent.shape[0],), float("inf"), device=latent.device)
        for step in range(steps + 1):
            # One forward per step: the loss of the latents as they are before this step's
            # update is both the record of the best and the step's gradient.
            grad = step < steps and not (eps is not None and bool((best_loss <= eps).all()))
            with torch.set_grad_enabled(grad):
                loss = self.objective(latent, noisy)
            with torch.no_grad():
                better = loss.detach() < best_loss
                best[better] = latent.detach()[better]
                best_loss = torch.where(better, loss.detach(), best_loss)
            if not grad:
                break
            optimizer.zero_grad(set_to_none=True)
            # The sum keeps every sample's gradient its own (Adam scales each coordinate).
            loss.sum().backward()
            optimizer.step()
        return best, best_loss

    def search(self, noisy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The best latent for each window of ``noisy`` and its loss (Algorithm 2)."""
        n = noisy.shape[0]
        draw = torch.Generator().manual_seed(self.seed)
        latent = torch.randn(n * self.starts, self.latent_dim, generator=draw).to(noisy.device)
        # Phase 1: every start of every window, in one batch.
        latent, loss = self.descend(latent, noisy.repeat_interleave(self.starts, 0), self.steps)
        pick = loss.reshape(n, self.starts).argmin(1) + torch.arange(n, device=noisy.device) * self.starts
        # Phase 2: the best start of each window, until its loss is below eps.
        return self.descend(latent[pick], noisy, self.max_steps, self.eps)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        was_training = self.generator.training
        # The generator draws as it will be judged (BatchNorm with its running statistics),
        # and its weights stay as they are: only the latents get gradients.
        self.generator.eval()
        frozen = [p for p in self.generator.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            with torch.enable_grad(), torch.autocast(noisy.device.type, enabled=False):
                latent, _ = self.search(noisy.detach().float())
            with torch.no_grad():
                out = self.generator(latent).float()
                if self.residual == "shrink":
                    out = self.corrected(noisy.float(), out)
        finally:
            for p in frozen:
                p.requires_grad_(True)
            self.generator.train(was_training)
        self.seconds += time.perf_counter() - started
        self.windows += noisy.shape[0]
        return out.to(noisy.dtype)


def inversion_denoiser(generator: torch.nn.Module, settings: dict | None) -> torch.nn.Module:
    """The network that denoises for ``generator``: the generator itself for an image-to-image
    one, a ``LatentInversion`` of it with the recipe's ``inversion`` settings for a latent one."""
    if not is_latent_generator(generator):
        return generator
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(INVERSION_KEYS))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}")
    return LatentInversion(generator, **settings)
