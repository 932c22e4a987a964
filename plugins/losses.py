"""General losses: pixel losses, SSIM (MONAI) and the adversarial criteria."""

from __future__ import annotations

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
    register("gan", AdversarialLoss, aliases=("adversarial",))
