"""Training without clean images (issue 12): Noise2Noise and a Noise2Void-style blind spot.

- ``noise2noise`` (Lehtinen et al. 2018): the target is a second, independent noisy image of
  the same object; with a mean-seeking loss (MSE) the network learns the clean mean.  Each
  sample's input and target are swapped at random (both acquisitions serve as input).  The
  pairs come from ``data.paired`` (``train_clean`` holding the second acquisitions, matched
  by name), from ``data.frame_pairs`` (adjacent frames of a time series or stack), or from
  ``data.target: noisy_copy`` (a second noise draw of synthetic data).
- ``noise2void`` (Krull et al. 2019): from noisy images alone.  A few pixels of each patch
  are replaced by a random neighbour (never themselves) and the loss is taken only there,
  against their original noisy values: a network cannot learn to copy its input, and with
  noise independent from pixel to pixel it learns the signal.  The clean target of a
  synthetic batch is never read.
"""

from __future__ import annotations

import torch

import toolbox
from toolbox import RecipeError, Scheme


def blind_spot(x: torch.Tensor, fraction: float, radius: int, generator: torch.Generator):
    """``(masked input, mask)``: about ``fraction`` of the pixels of each image replaced by
    the value of a random other pixel within ``radius`` along every axis (clamped at the
    border, and never the pixel itself)."""
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    mask = torch.rand(x.shape, generator=generator, device="cpu") < fraction
    mask = mask.to(x.device)
    offsets = []
    for _ in spatial:
        offsets.append(torch.randint(-radius, radius + 1, x.shape, generator=generator, device="cpu"))
    # An offset of zero on every axis would show the pixel itself: move it one step along
    # the first axis instead.
    still = torch.stack(offsets).eq(0).all(0)
    offsets[0] = torch.where(still, torch.ones_like(offsets[0]), offsets[0])
    grids = torch.meshgrid(*[torch.arange(s) for s in spatial], indexing="ij")
    source = []
    for axis, (grid, offset) in enumerate(zip(grids, offsets)):
        moved = grid + offset
        # Reflect at the border: clamping could land back on the pixel itself.
        moved = torch.where(moved < 0, -moved, moved)
        moved = torch.where(moved >= spatial[axis], 2 * (spatial[axis] - 1) - moved, moved)
        source.append(moved.clamp(0, spatial[axis] - 1))
    # A reflection can land back on the pixel (index 1, offset -2): take its next neighbour.
    same = torch.stack([s == g for s, g in zip(source, grids)]).all(0)
    step = torch.where(grids[0] + 1 < spatial[0], grids[0] + 1, grids[0] - 1).expand(x.shape)
    source[0] = torch.where(same, step, source[0])
    flat = torch.zeros(x.shape, dtype=torch.long)
    for axis, index in enumerate(source):
        stride = 1
        for size in spatial[axis + 1:]:
            stride *= size
        flat = flat + index * stride
    values = x.reshape(n, c, -1).gather(2, flat.reshape(n, c, -1).to(x.device)).reshape(x.shape)
    return torch.where(mask, values, x), mask


class Noise2Void(Scheme):
    """Blind-spot training on noisy images alone: ``fraction`` of the pixels (N2V: 0.2-2 %)
    replaced from a neighbourhood of ``radius``; ``loss`` mse (the mean) or l1 (the median)
    on those pixels only.  ``batch["target"]`` is never read."""

    def __init__(self, parts, fraction: float = 0.02, radius: int = 2, loss: str = "mse"):
        super().__init__(parts)
        if not 0 < fraction < 1 or radius < 1:
            raise ValueError(f"fraction must be in (0, 1) and radius >= 1, got {fraction}, {radius}")
        if loss not in ("mse", "l1"):
            raise ValueError(f"loss must be mse or l1, got {loss!r}")
        if parts.context > 1:
            raise RecipeError("noise2void masks single images; remove data.context_slices", parts.source, "scheme")
        self.fraction, self.radius, self.loss = fraction, radius, loss
        self.generator = parts.generator()
        self.optimizer = parts.optimizer("generator", self.generator.parameters())
        self.masks = torch.Generator().manual_seed(int(parts.recipe.get("seed", 0)) + 7)
        self.track("generator", self.generator)
        self.track("generator", self.optimizer)
        self.track("masks", self.masks)

    def masked_loss(self, noisy: torch.Tensor) -> torch.Tensor:
        masked, mask = blind_spot(noisy, self.fraction, self.radius, self.masks)
        with self.parts.autocast():
            output = self.generate(masked)
        error = output.float() - noisy.float()
        error = error.square() if self.loss == "mse" else error.abs()
        return (error * mask).sum() / mask.sum().clamp(min=1)

    def train_step(self, batches, step):
        loss = self.masked_loss(batches[0]["input"])
        self.backward_step(loss, self.optimizer)
        return self.logged({f"l_g_n2v_{self.loss}": loss}, loss)


class Noise2Noise(Scheme):
    """Supervised training whose targets are noisy too: every loss in ``losses`` between
    G(input) and the target, input and target swapped per sample with probability 0.5."""

    def __init__(self, parts, swap: bool = True):
        super().__init__(parts)
        self.generator = parts.generator()
        self.losses = parts.losses()
        if not self.losses:
            raise RecipeError("scheme 'noise2noise' needs a loss (MSE learns the mean)", parts.source, "losses")
        if swap and parts.context > 1:
            raise RecipeError("swap needs input and target of the same kind; set swap: false for 2.5D",
                              parts.source, "scheme.swap")
        self.swap = swap
        self.optimizer = parts.optimizer("generator", self.generator.parameters())
        self.swaps = torch.Generator().manual_seed(int(parts.recipe.get("seed", 0)) + 11)
        self.track("generator", self.generator)
        self.track("generator", self.optimizer)
        self.track("swaps", self.swaps)

    def train_step(self, batches, step):
        source, target = batches[0]["input"], batches[0]["target"]
        if self.swap:
            flip = torch.rand(source.shape[0], generator=self.swaps).to(source.device)
            flip = (flip < 0.5).reshape(-1, *[1] * (source.ndim - 1))
            source, target = torch.where(flip, target, source), torch.where(flip, source, target)
        with self.parts.autocast():
            output = self.generate(source)
        terms = {f"l_g_{name}": loss(output.float(), target) for name, loss in self.losses.items()}
        total = sum(terms.values())
        self.backward_step(total, self.optimizer)
        return self.logged(terms, total)


@toolbox.hookimpl
def register_schemes(register):
    register("noise2noise", Noise2Noise, aliases=("n2n",))
    register("noise2void", Noise2Void, aliases=("n2v", "blind_spot"), example={"fraction": 0.05})
