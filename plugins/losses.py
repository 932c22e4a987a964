"""General losses: pixel losses, SSIM (MONAI), the power-spectrum (texture) loss and the adversarial criteria."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import toolbox


def l1_loss(reduction: str = "mean"):
    """Mean absolute error (L1): pix2pix's content term; keeps edges sharper than MSE."""
    return torch.nn.L1Loss(reduction=reduction)


def mse_loss(reduction: str = "mean"):
    """Mean squared error (L2): the CNN-MSE / WGAN-MSE content term."""
    return torch.nn.MSELoss(reduction=reduction)


class CharbonnierLoss(torch.nn.Module):
    """Charbonnier loss sqrt((x - y)^2 + eps^2): L1 that is smooth at zero."""

    def __init__(self, eps: float = 1e-3):
        super().__init__()
        self.eps = eps

    def forward(self, prediction, target):
        return torch.sqrt((prediction - target) ** 2 + self.eps**2).mean()


class SSIMLoss(torch.nn.Module):
    """1 - SSIM (MONAI ``SSIMLoss``) with an explicit data range (1.0 for normalised data)."""

    def __init__(self, spatial_dims: int = 2, data_range: float = 1.0, win_size: int = 7):
        super().__init__()
        from monai.losses import SSIMLoss as MonaiSSIMLoss

        self.loss = MonaiSSIMLoss(spatial_dims=spatial_dims, data_range=data_range, win_size=win_size)

    def forward(self, prediction, target):
        return self.loss(prediction.float(), target.float())


class SpectrumLoss(torch.nn.Module):
    """Texture as power per frequency band: |log(band power of output / band power of target)|.

    A denoiser trained on a pixel loss returns the conditional mean, which has lost part of
    the power of the fine frequencies (blur); a discriminator can restore it, but slowly and
    unevenly.  This term measures the loss directly, as the texture score of
    ``toolbox.texture`` does (Fourier-space losses for perceptual super-resolution: Fuoli et
    al. 2021; focal frequency loss: Jiang et al. 2021): each patch, mean-subtracted and
    Hann-windowed so that its borders are not counted as edges, is Fourier-transformed over
    its spatial axes (all after batch and channel, or the last ``spatial_dims``); the power
    is averaged within ``bands`` equal rings of radial frequency from ``low`` to 0.5
    cycles/voxel, and the log ratio of the output's to the target's is averaged over bands,
    channels and patches.  It compares amounts of power,
    not phases, so it asks for the right amount of detail, not for the target's own noise
    pixel by pixel: pair it with a pixel loss, which decides where the detail goes.  ``eps``
    (power in the normalised units squared) is the level below which a band counts as empty,
    so that a flat patch does not ask for infinite smoothness.  ``tile``: measure each
    ``tile``-wide block of a patch on its own (the patch is cut into non-overlapping blocks;
    a remainder is left out), so that power must appear where the target has texture and
    not elsewhere; without it a flat region and a textured one in one patch share a budget,
    which a network meets by leaving some noise everywhere.
    """

    def __init__(self, spatial_dims: int | None = None, low: float = 0.125, bands: int = 6, eps: float = 1e-6,
                 tile: int | None = None):
        super().__init__()
        if not 0.0 <= low < 0.5:
            raise ValueError(f"low must be in [0, 0.5) cycles/voxel, got {low}")
        if bands < 1:
            raise ValueError(f"bands must be at least 1, got {bands}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if tile is not None and tile < 8:
            raise ValueError(f"tile must be at least 8 voxels (or null: whole patches), got {tile}")
        self.spatial_dims, self.low, self.bands, self.eps, self.tile = spatial_dims, low, bands, eps, tile
        self._layouts: dict = {}

    def _layout(self, shape: tuple[int, ...], device) -> tuple[torch.Tensor, torch.Tensor]:
        """The Hann window of a patch shape and each frequency's band (-1: outside every band)."""
        key = (shape, str(device))
        if key not in self._layouts:
            window = torch.ones((), dtype=torch.float32)
            radius = torch.zeros((), dtype=torch.float32)
            for size in shape:
                window = window.unsqueeze(-1) * torch.hann_window(size, periodic=False)
                radius = radius.unsqueeze(-1) + torch.fft.fftfreq(size) ** 2
            edges = torch.linspace(self.low, 0.5, self.bands + 1)
            band = torch.bucketize(radius.sqrt(), edges, right=True) - 1
            band[(band < 0) | (band >= self.bands)] = -1  # as toolbox.texture: 0.5 itself is out
            self._layouts[key] = (window.to(device), band.to(device))
        return self._layouts[key]

    def tiles(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> (B * blocks, C, *tile) when ``tile`` is set."""
        if self.tile is None:
            return image
        spatial = self.spatial_dims or image.dim() - 2
        if min(image.shape[-spatial:]) < self.tile:
            raise ValueError(f"spectrum loss: tile {self.tile} is larger than the patch {tuple(image.shape[-spatial:])}")
        for dim in range(image.dim() - spatial, image.dim()):
            image = image.unfold(dim, self.tile, self.tile)  # blocks of each axis, block size last
        # (B, C, n1..nk, t1..tk) -> (B, n1..nk, C, t1..tk) -> (B * n, C, t1..tk)
        batch, channels, counts = image.shape[0], image.shape[1], image.shape[2:2 + spatial]
        order = (0, *range(2, 2 + spatial), 1, *range(2 + spatial, 2 + 2 * spatial))
        return image.permute(order).reshape(batch * math.prod(counts), channels, *image.shape[2 + spatial:])

    def check_patch(self, patch) -> None:
        """A tile larger than the training patch cannot be measured (called when a recipe is built)."""
        if self.tile is not None and min(patch) < self.tile:
            raise ValueError(f"spectrum loss: tile {self.tile} is larger than the patch {list(patch)}")

    def band_power(self, image: torch.Tensor) -> torch.Tensor:
        """(batch, channels, bands) mean power of a (B, C, *spatial) image (per block with ``tile``)."""
        image = self.tiles(image)
        spatial = self.spatial_dims or image.dim() - 2
        dims = tuple(range(-spatial, 0))
        window, band = self._layout(tuple(image.shape[-spatial:]), image.device)
        centred = image.float() - image.float().mean(dim=dims, keepdim=True)
        spectrum = torch.fft.fftn(centred * window, dim=dims)
        power = (spectrum.real**2 + spectrum.imag**2).flatten(2) / window.square().sum()
        which = band.flatten()
        inside = which >= 0
        totals = power.new_zeros(*power.shape[:2], self.bands).index_add_(2, which[inside], power[..., inside])
        counts = torch.bincount(which[inside], minlength=self.bands).clamp(min=1).to(power.dtype)
        return totals / counts

    def forward(self, prediction, target):
        ratio = (self.band_power(prediction) + self.eps) / (self.band_power(target) + self.eps)
        return ratio.log().abs().mean()


class AdversarialLoss(torch.nn.Module):
    """Adversarial criterion on raw logits: ``bce`` (with logits), ``lsgan``, ``hinge``, ``wgan``,
    ``ragan``.

    Called ``loss(logits, target_is_real, for_discriminator)`` like MONAI's
    ``PatchAdversarialLoss``; unlike it, BCE works on logits (stable, and safe under
    autocast) and hinge is the standard one (no tanh).  ``wgan`` is the Wasserstein critic's
    -E[D(real)] + E[D(fake)] (generator: -E[D(fake)]); pair it with a gradient penalty
    (scheme ``wgan_gp``).  ``real_label`` < 1 gives one-sided label smoothing for the
    discriminator (DCGAN-style 0.9).

    ``ragan`` is the relativistic average GAN of ESRGAN: the discriminator estimates whether
    a real image is more realistic than the fakes on average (and a fake less than the real
    ones), BCE with logits on ``C(real) - mean C(fake)`` and ``C(fake) - mean C(real)``; the
    generator gets the same with the labels swapped, so it learns from the real images'
    logits too.  It needs both sets of logits: call ``relative(real, fake, ...)``.
    """

    MODES = ("bce", "lsgan", "hinge", "wgan", "ragan")

    def __init__(self, mode: str = "bce", real_label: float = 1.0):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"mode must be {', '.join(self.MODES[:-1])} or {self.MODES[-1]}, got {mode!r}")
        self.mode = mode
        self.real_label = real_label

    @property
    def relativistic(self) -> bool:
        """True when the loss compares real and fake logits (``relative``), not one set alone."""
        return self.mode == "ragan"

    def relative(self, real_logits, fake_logits, for_discriminator: bool = True) -> dict:
        """The relativistic terms ``{"real": ..., "fake": ...}`` (each half of the total, as
        ESRGAN weights them); a list of logit maps (multi-scale) is averaged over the maps."""
        if isinstance(real_logits, (list, tuple)):
            pairs = [self.relative(r, f, for_discriminator) for r, f in zip(real_logits, fake_logits)]
            return {key: sum(p[key] for p in pairs) / len(pairs) for key in ("real", "fake")}
        real, fake = real_logits.float(), fake_logits.float()
        real_label = self.real_label if for_discriminator else 1.0

        def bce(logits, label):
            return 0.5 * F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))

        # The discriminator says real > average fake; the generator, the opposite.
        if for_discriminator:
            return {"real": bce(real - fake.mean(), real_label), "fake": bce(fake - real.mean(), 0.0)}
        return {"real": bce(real - fake.mean(), 0.0), "fake": bce(fake - real.mean(), real_label)}

    def forward(self, logits, target_is_real: bool, for_discriminator: bool = True):
        if self.relativistic:
            raise ValueError("gan mode ragan compares real and fake logits: this training scheme judges one "
                             "set at a time; use a scheme built on toolbox.GANScheme, or another mode")
        if isinstance(logits, (list, tuple)):
            return sum(self.forward(x, target_is_real, for_discriminator) for x in logits) / len(logits)
        logits = logits.float()
        if self.mode == "wgan":
            return -logits.mean() if (target_is_real or not for_discriminator) else logits.mean()
        if self.mode == "hinge":
            if not for_discriminator:
                return -logits.mean()
            return F.relu(1 - logits).mean() if target_is_real else F.relu(1 + logits).mean()
        label = (self.real_label if for_discriminator else 1.0) if target_is_real else 0.0
        target = torch.full_like(logits, label)
        if self.mode == "bce":
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.mse_loss(logits, target)


@toolbox.hookimpl
def register_losses(register):
    register("l1", l1_loss, aliases=("mae",))
    register("mse", mse_loss, aliases=("l2",))
    register("charbonnier", CharbonnierLoss)
    register("ssim", SSIMLoss)
    register("spectrum", SpectrumLoss, aliases=("fourier",))
    register("gan", AdversarialLoss, aliases=("adversarial",))
