"""ADL: Adversarial Distortion Learning (Ghahremani et al. 2022, seed 003), 2D and 3D.

- ``efficient_unet``: the denoiser.  Residual blocks (conv-norm-ReLU-conv-norm plus a 1x1
  shortcut), an encoder of 96/128/160 filters and a 192-filter bridge (stride 8 in all), a
  transposed-conv decoder with skips, the *content enhancer* (parallel dilated 7-wide
  convolutions on the noisy input, fed to the last decoder stage), and three *transformer*
  heads (residual blocks, 1x1 conv, sigmoid) giving the image at full, 1/2 and 1/4 scale.
- ``efficient_unet_discriminator``: the same shape with 48/64/80/96 filters, returning
  logit maps at the bridge and at the three scales.
- Losses ``pyramid_texture`` (a-trous B3-spline detail bands), ``histogram`` (a soft,
  differentiable histogram compared with log-cosh) and ``adl`` (L1 + pyramid + histogram).
- Scheme ``adl``: denoiser warm-up, discriminator warm-up, then adversarial training with
  deep supervision at every scale of the denoiser.

``release_compat`` switches reproduce the public (TensorFlow, 2D) release instead of the
paper: hard histogram (no gradient), only the coarsest pyramid band (the release's loop
keeps only its last band), a discriminator shown clean vs *noisy* images, and no
adversarial term in the denoiser's loss.  Everything else follows the paper.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv, Norm

import toolbox
from toolbox import RecipeError, Scheme
from toolbox.nn import pad_to_multiple


# -- building blocks -------------------------------------------------------------------------
def _norm(kind: str, dims: int, channels: int) -> torch.nn.Module:
    if kind == "batch":
        return Norm[Norm.BATCH, dims](channels)
    if kind == "instance":
        return Norm[Norm.INSTANCE, dims](channels, affine=True)
    if kind == "none":
        return torch.nn.Identity()
    raise ValueError(f"norm must be batch, instance or none, got {kind!r}")


class ResidualBlock(torch.nn.Module):
    """conv(stride)-norm-ReLU-conv-norm, plus a 1x1 (strided) shortcut, then ReLU."""

    def __init__(self, dims, in_channels, out_channels, stride=1, norm="batch", kernel_size=3):
        super().__init__()
        conv = Conv[Conv.CONV, dims]
        bias = norm == "none"
        pad = kernel_size // 2
        self.body = torch.nn.Sequential(
            conv(in_channels, out_channels, kernel_size, stride=stride, padding=pad, bias=bias),
            _norm(norm, dims, out_channels), torch.nn.ReLU(inplace=True),
            conv(out_channels, out_channels, kernel_size, padding=pad, bias=bias),
            _norm(norm, dims, out_channels),
        )
        self.shortcut = conv(in_channels, out_channels, 1, stride=stride, bias=bias)

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


class ContentEnhancer(torch.nn.Module):
    """Parallel dilated convolutions (dilation 1, 2, 4) on the noisy input, fused.

    Gives the last decoder stage a wide view of the raw input (the paper's content
    enhancer): three ``kernel_size`` convolutions of ``channels/2`` filters, concatenated,
    norm-ReLU, a fusing convolution, norm, plus a 1x1 shortcut, then leaky ReLU (0.1).
    """

    def __init__(self, dims, in_channels, channels, norm="batch", kernel_size=7):
        super().__init__()
        conv = Conv[Conv.CONV, dims]
        bias = norm == "none"
        half = max(channels // 2, 1)
        self.branches = torch.nn.ModuleList(
            conv(in_channels, half, kernel_size, padding=d * (kernel_size // 2), dilation=d, bias=bias)
            for d in (1, 2, 4)
        )
        self.fuse = torch.nn.Sequential(
            _norm(norm, dims, 3 * half), torch.nn.ReLU(inplace=True),
            conv(3 * half, channels, kernel_size, padding=kernel_size // 2, bias=bias),
            _norm(norm, dims, channels),
        )
        self.shortcut = conv(in_channels, channels, 1, bias=bias)

    def forward(self, x):
        fused = self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))
        return F.leaky_relu(fused + self.shortcut(x), 0.1)


class DecoderBlock(torch.nn.Module):
    """Transposed convolution (x2), concatenate the skip, residual block."""

    def __init__(self, dims, in_channels, skip_channels, out_channels, norm="batch"):
        super().__init__()
        self.up = Conv[Conv.CONVTRANS, dims](in_channels, out_channels, 3, stride=2, padding=1,
                                              output_padding=1, bias=False)
        self.block = ResidualBlock(dims, out_channels + skip_channels, out_channels, norm=norm)

    def forward(self, x, skip):
        return self.block(torch.cat([self.up(x), skip], dim=1))


class Transformer(torch.nn.Module):
    """An output head: ``depth`` residual blocks halving the width, then a 1x1 convolution.

    For the denoiser the result goes through a sigmoid (an image in 0..1); for the
    discriminator through leaky ReLU first and no sigmoid (a map of logits).
    """

    def __init__(self, dims, in_channels, out_channels, depth, norm="batch", image=True, widths=None):
        super().__init__()
        widths = widths or [max(in_channels // 2 ** (i + 1), 1) for i in range(depth)]
        blocks, channels = [], in_channels
        for width in widths:
            blocks.append(ResidualBlock(dims, channels, width, norm=norm))
            channels = width
        self.blocks = torch.nn.Sequential(*blocks)
        self.image = image
        self.out = Conv[Conv.CONV, dims](channels, out_channels, 1, bias=not image)

    def forward(self, x):
        x = self.blocks(x)
        if not self.image:
            return self.out(F.leaky_relu(x, 0.1))
        return self.out(x)


def _check_filters(filters, bridge, name):
    if len(filters) != 3 or not all(isinstance(f, int) and f > 0 for f in (*filters, bridge)):
        raise ValueError(f"{name}: filters needs three positive integers and a positive bridge, "
                         f"got {filters!r} and {bridge!r}")


# -- networks --------------------------------------------------------------------------------
class EfficientUNet(torch.nn.Module):
    """ADL's Efficient-UNet denoiser: returns (full, 1/2, 1/4 scale) images.

    ``filters``/``bridge``: encoder widths (paper 96, 128, 160 and 192).  ``output:
    sigmoid`` (paper) keeps images in 0..1; ``linear`` suits data normalised beyond it;
    ``residual`` adds each head's output to the input (average-pooled to the head's scale;
    for 2.5D inputs, the middle slice), so the network learns the noise, not the image,
    and weak noise passes through without the blur of rebuilding the image.
    Inputs of any size are padded to a multiple of 8 and cropped back (the 1/2 and 1/4
    outputs to the matching sizes).
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1,
                 filters=(96, 128, 160), bridge: int = 192, norm: str = "batch",
                 enhancer_kernel: int = 7, content_enhancer: bool = True, output: str = "sigmoid"):
        super().__init__()
        _check_filters(filters, bridge, "efficient_unet")
        if output not in ("sigmoid", "linear", "residual"):
            raise ValueError(f"output must be sigmoid, linear or residual, got {output!r}")
        if output == "residual" and in_channels % out_channels:
            raise ValueError(f"output: residual needs in_channels ({in_channels}) to be a multiple "
                             f"of out_channels ({out_channels})")
        d = spatial_dims
        self.out_channels = out_channels
        f1, f2, f3 = filters
        self.enhancer = ContentEnhancer(d, in_channels, f1, norm, enhancer_kernel) if content_enhancer else None
        self.enc1 = ResidualBlock(d, in_channels, f1, norm=norm)
        self.enc2 = ResidualBlock(d, f1, f2, stride=2, norm=norm)
        self.enc3 = ResidualBlock(d, f2, f3, stride=2, norm=norm)
        self.bridge = ResidualBlock(d, f3, bridge, stride=2, norm=norm)
        self.dec1 = DecoderBlock(d, bridge, f3, f3, norm)
        self.dec2 = DecoderBlock(d, f3, f2, f2, norm)
        self.dec3 = DecoderBlock(d, f2, f1 * (2 if content_enhancer else 1), f1, norm)
        self.head_quarter = Transformer(d, f3, out_channels, 3, norm)
        self.head_half = Transformer(d, f2, out_channels, 2, norm)
        self.head_full = Transformer(d, f1, out_channels, 1, norm)
        self.output = output

    def forward(self, x):
        padded, crop = pad_to_multiple(x, 8)
        s1 = self.enc1(padded)
        s2 = self.enc2(s1)
        s3 = self.enc3(s2)
        y = self.dec1(self.bridge(s3), s3)
        quarter = self.head_quarter(y)
        y = self.dec2(y, s2)
        half = self.head_half(y)
        skip = torch.cat([s1, self.enhancer(padded)], dim=1) if self.enhancer is not None else s1
        full = self.head_full(self.dec3(y, skip))
        outs = []
        if self.output == "residual":
            middle = (padded.shape[1] // self.out_channels) // 2 * self.out_channels
            source = padded[:, middle:middle + self.out_channels]
        for image, factor in ((full, 1), (half, 2), (quarter, 4)):
            if self.output == "sigmoid":
                image = torch.sigmoid(image)
            elif self.output == "residual":
                pooled = source if factor == 1 else _average_pool(source, factor)
                image = image + pooled[(slice(None), slice(None)) + tuple(slice(0, n) for n in image.shape[2:])]
            size = [math.ceil(s.stop / factor) for s in crop[2:]]
            outs.append(image[(slice(None), slice(None)) + tuple(slice(0, n) for n in size)])
        return tuple(outs)


def _average_pool(x: torch.Tensor, factor: int) -> torch.Tensor:
    pool = torch.nn.functional.avg_pool3d if x.dim() == 5 else torch.nn.functional.avg_pool2d
    return pool(x, factor, ceil_mode=True)


class EfficientUNetDiscriminator(torch.nn.Module):
    """ADL's discriminator: Efficient-UNet shape, smaller; logit maps (bridge, full, 1/2, 1/4).

    ``filters``/``bridge``: paper 48, 64, 80 and 96 (the public code: 16, 32, 64 and 128).
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, filters=(48, 64, 80),
                 bridge: int = 96, norm: str = "batch"):
        super().__init__()
        _check_filters(filters, bridge, "efficient_unet_discriminator")
        d = spatial_dims
        f1, f2, f3 = filters
        self.enc1 = ResidualBlock(d, in_channels, f1, norm=norm)
        self.enc2 = ResidualBlock(d, f1, f2, stride=2, norm=norm)
        self.enc3 = ResidualBlock(d, f2, f3, stride=2, norm=norm)
        self.bridge = ResidualBlock(d, f3, bridge, stride=2, norm=norm)
        self.bridge_map = Conv[Conv.CONV, d](bridge, 1, 1)
        self.dec1 = DecoderBlock(d, bridge, f3, f3, norm)
        self.dec2 = DecoderBlock(d, f3, f2, f2, norm)
        self.dec3 = DecoderBlock(d, f2, f1, f1, norm)
        self.head_quarter = Transformer(d, f3, 1, 3, norm, image=False, widths=[f3, f3 // 2, f3 // 4])
        self.head_half = Transformer(d, f2, 1, 2, norm, image=False, widths=[f2, f2 // 2])
        self.head_full = Transformer(d, f1, 1, 1, norm, image=False, widths=[max(f1 // 2, 1)])

    def forward(self, x):
        padded, _ = pad_to_multiple(x, 8)
        s1 = self.enc1(padded)
        s2 = self.enc2(s1)
        s3 = self.enc3(s2)
        b = self.bridge(s3)
        y = self.dec1(b, s3)
        quarter = self.head_quarter(y)
        y = self.dec2(y, s2)
        half = self.head_half(y)
        full = self.head_full(self.dec3(y, s1))
        return (self.bridge_map(b), full, half, quarter)


# -- losses ----------------------------------------------------------------------------------
def _separable_blur(x: torch.Tensor, kernel_1d: torch.Tensor, dilation: int) -> torch.Tensor:
    """Blur every spatial axis of ``x`` (N, C, *spatial) with a dilated 1D kernel, reflect-padded."""
    dims = x.ndim - 2
    channels = x.shape[1]
    taps = kernel_1d.numel()
    reach = dilation * (taps // 2)
    conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    for axis in range(dims):
        shape = [1] * dims
        shape[axis] = taps
        weight = kernel_1d.to(x).reshape(1, 1, *shape).repeat(channels, 1, *[1] * dims)
        pad = [0, 0] * dims
        pad[2 * (dims - 1 - axis)] = pad[2 * (dims - 1 - axis) + 1] = reach
        # Reflection needs the axis longer than the pad; replicate short axes instead.
        mode = "reflect" if x.shape[2 + axis] > reach else "replicate"
        padded = F.pad(x, pad, mode=mode)
        dilations = [1] * dims
        dilations[axis] = dilation
        x = conv(padded, weight, groups=channels, dilation=tuple(dilations))
    return x


B3_SPLINE = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
RELEASE_PRE_BLUR = torch.tensor([0.002566, 0.1655, 0.6638, 0.1655, 0.002566])


def wavelet_bands(x: torch.Tensor, levels: int, release_compat: bool = False) -> list[torch.Tensor]:
    """A-trous B3-spline detail bands: w_j = c_(j-1) - c_j, c_j = c_(j-1) blurred at dilation 2^(j-1)."""
    current = x
    if release_compat:
        current = _separable_blur(x, RELEASE_PRE_BLUR / RELEASE_PRE_BLUR.sum(), 1)
    bands = []
    for level in range(levels):
        blurred = _separable_blur(current, B3_SPLINE, 2**level)
        bands.append(current - blurred)
        current = blurred
    return bands


class PyramidTextureLoss(torch.nn.Module):
    """Pyramid texture loss: L1 between a-trous B3-spline detail bands, every band summed.

    ``levels`` bands (dilations 1, 2, 4, ...), each weighted by ``weights`` (default 1).
    2D and 3D.  ``release_compat: true`` keeps only the coarsest band divided by the number
    of levels, after a small pre-blur, as the public release computes it.
    """

    def __init__(self, levels: int = 3, weights=None, release_compat: bool = False):
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be at least 1, got {levels}")
        if weights is not None and len(weights) != levels:
            raise ValueError(f"weights needs {levels} numbers, got {weights!r}")
        self.levels = levels
        self.weights = list(weights) if weights is not None else [1.0] * levels
        self.release_compat = release_compat

    def forward(self, prediction, target):
        prediction, target = prediction.float(), target.float()
        pred_bands = wavelet_bands(prediction, self.levels, self.release_compat)
        target_bands = wavelet_bands(target, self.levels, self.release_compat)
        if self.release_compat:
            return (pred_bands[-1] - target_bands[-1]).abs().mean() / self.levels
        return sum(w * (p - t).abs().mean() for w, p, t in zip(self.weights, pred_bands, target_bands))


def soft_histogram(x: torch.Tensor, bins: int, low: float, high: float) -> torch.Tensor:
    """Histogram counts per (image, channel) with linear (triangular) binning.

    Each value splits its unit count between its two nearest bin centres in proportion to
    its distance from them, so the counts are piecewise linear in the values and their
    gradient is non-zero; memory stays O(voxels), in 2D and 3D alike.
    """
    n, c = x.shape[:2]
    values = x.float().reshape(n * c, -1).clamp(low, high)
    position = (values - low) / (high - low) * (bins - 1)
    lower = position.detach().floor().clamp(0, bins - 2)
    upper_weight = position - lower
    counts = torch.zeros(n * c, bins, device=x.device, dtype=torch.float32)
    counts = counts.scatter_add(1, lower.long(), 1.0 - upper_weight)
    counts = counts.scatter_add(1, lower.long() + 1, upper_weight)
    return counts.reshape(n, c, bins)


class HistogramLoss(torch.nn.Module):
    """Histogram loss: log-cosh between the histograms of prediction and target.

    Per image and channel, ``bins`` bins over ``value_range``; counts compared with
    log-cosh and divided by the number of voxels (as the release scales it).  The histogram
    is soft (linear binning), so the loss has a gradient; ``release_compat: true`` uses the
    release's hard histogram, which has none.
    """

    def __init__(self, bins: int = 256, value_range=(0.0, 1.0), release_compat: bool = False):
        super().__init__()
        if bins < 2:
            raise ValueError(f"bins must be at least 2, got {bins}")
        low, high = (float(v) for v in value_range)
        if not high > low:
            raise ValueError(f"value_range must be [low, high] with low < high, got {value_range!r}")
        self.bins, self.low, self.high = bins, low, high
        self.release_compat = release_compat

    def _histogram(self, x):
        if not self.release_compat:
            return soft_histogram(x, self.bins, self.low, self.high)
        n, c = x.shape[:2]
        flat = x.detach().float().reshape(n * c, -1).clamp(self.low, self.high)
        hist = torch.stack([torch.histc(row, self.bins, self.low, self.high) for row in flat])
        return hist.reshape(n, c, self.bins)

    def forward(self, prediction, target):
        diff = self._histogram(prediction) - self._histogram(target)
        # log(cosh(d)) written to stay finite for large |d|: |d| + log(1 + e^(-2|d|)) - log 2.
        log_cosh = diff.abs() + F.softplus(-2 * diff.abs()) - math.log(2.0)
        voxels = prediction[0, 0].numel()
        loss = log_cosh.sum(dim=-1) / voxels
        if self.release_compat:  # no gradient: keep the graph connected with a zero term
            return loss.mean() + 0.0 * prediction.sum()
        return loss.mean()


class ADLLoss(torch.nn.Module):
    """ADL's fidelity loss at one scale: l1 * L1 + pyramid * L_pyr + histogram * L_hist."""

    def __init__(self, l1: float = 1.0, pyramid: float = 1.0, histogram: float = 1.0,
                 levels: int = 3, bins: int = 256, release_compat: bool = False):
        super().__init__()
        self.weights = (l1, pyramid, histogram)
        self.pyramid = PyramidTextureLoss(levels, release_compat=release_compat)
        self.histogram = HistogramLoss(bins, release_compat=release_compat)

    @property
    def release_compat(self) -> bool:
        return self.pyramid.release_compat

    @release_compat.setter
    def release_compat(self, value: bool) -> None:
        self.pyramid.release_compat = self.histogram.release_compat = value

    def forward(self, prediction, target):
        w_l1, w_pyr, w_hist = self.weights
        loss = w_l1 * (prediction.float() - target.float()).abs().mean()
        if w_pyr:
            loss = loss + w_pyr * self.pyramid(prediction, target)
        if w_hist:
            loss = loss + w_hist * self.histogram(prediction, target)
        return loss


# -- scheme ----------------------------------------------------------------------------------
def _downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    if factor == 1:
        return x
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[x.ndim - 3]
    return pool(x, factor, ceil_mode=True)


class ADLScheme(Scheme):
    """ADL training: denoiser warm-up, discriminator warm-up, then adversarial training.

    Steps ``1..warmup_g`` train the denoiser alone on the fidelity losses; the next
    ``warmup_d`` steps train the discriminator alone; after that both train, the
    discriminator every ``d_every`` steps with its learning rate set to ``d_lr`` (the
    paper's 5e-5).  Every loss but ``adversarial`` is applied at each output scale of the
    denoiser against the target average-pooled to that scale, weighted by
    ``scale_weights`` (deep supervision).  The discriminator compares the denoised output
    with the clean image (paper); ``release_compat: true`` shows it the noisy input
    instead, drops the denoiser's adversarial term, and switches every loss that has a
    ``release_compat`` option to the release's behaviour.  Works with any generator
    (single output = one scale) and any discriminator (maps or a list of maps).
    """

    def __init__(self, parts, warmup_g: int = 0, warmup_d: int = 0, d_every: int = 1,
                 d_lr: float | None = 5e-5, adversarial: str = "adv", scale_weights=(1.0, 1.0, 1.0),
                 release_compat: bool = False):
        super().__init__(parts)
        if min(warmup_g, warmup_d) < 0 or d_every < 1:
            raise ValueError("warmup_g and warmup_d must be >= 0 and d_every >= 1")
        self.adversarial, self.fidelity = self.split_adversarial(adversarial, "{type: gan, mode: hinge}")
        self.adversarial_name = adversarial
        if not self.fidelity:
            raise RecipeError("scheme 'adl' needs at least one fidelity loss (e.g. {type: adl})",
                              parts.source, "losses")
        self.release_compat = release_compat
        for loss in self.fidelity.values():
            if hasattr(loss.module, "release_compat"):
                loss.module.release_compat = release_compat
        self.warmup_g, self.warmup_d, self.d_every, self.d_lr = warmup_g, warmup_d, d_every, d_lr
        self.scale_weights = list(scale_weights)
        self.build_adversarial_pair(parts.channels)

    def phase(self, step: int) -> str:
        if step <= self.warmup_g:
            return "warmup_g"
        if step <= self.warmup_g + self.warmup_d:
            return "warmup_d"
        return "adversarial"

    def _outputs(self, source):
        out = self.generator(source)
        return list(out) if isinstance(out, (tuple, list)) else [out]

    def _fidelity(self, outputs, target) -> dict[str, torch.Tensor]:
        terms = {}
        for name, loss in self.fidelity.items():
            total = 0.0
            for index, output in enumerate(outputs[: len(self.scale_weights)]):
                factor = 2**index
                total = total + self.scale_weights[index] * loss(output.float(), _downsample(target, factor))
            terms[f"l_g_{name}"] = total
        return terms

    def _discriminator_step(self, batch, denoised) -> dict[str, float]:
        criterion = self.adversarial.module
        fake_source = batch["input"] if self.release_compat else denoised.detach()
        self.requires_grad(self.discriminator, True)
        with self.parts.autocast():
            real = self.discriminator(batch["target"])
            fake = self.discriminator(fake_source)
        l_d_real = criterion(real, True, for_discriminator=True)
        l_d_fake = criterion(fake, False, for_discriminator=True)
        self.backward_step(l_d_real + l_d_fake, self.opt_d)
        return {"l_d_real": l_d_real.item(), "l_d_fake": l_d_fake.item()}

    def train_step(self, batches, step):
        batch = batches[0]
        phase = self.phase(step)
        if phase == "warmup_d":
            with torch.no_grad(), self.parts.autocast():
                denoised = self._outputs(batch["input"])[0]
            return self._discriminator_step(batch, denoised)
        if phase == "adversarial" and step == self.warmup_g + self.warmup_d + 1 and self.d_lr:
            for group in self.opt_d.param_groups:
                group["lr"] = self.d_lr
        with self.parts.autocast():
            outputs = self._outputs(batch["input"])
        terms = self._fidelity(outputs, batch["target"])
        if phase == "adversarial" and not self.release_compat:
            self.requires_grad(self.discriminator, False)
            with self.parts.autocast():
                judged = self.discriminator(outputs[0])
            terms[f"l_g_{self.adversarial_name}"] = self.adversarial.weight * self.adversarial.module(
                judged, True, for_discriminator=False)
        total = sum(terms.values())
        self.backward_step(total, self.opt_g)
        logged = {k: v.item() for k, v in terms.items()}
        logged["l_g_total"] = total.item()
        if phase == "adversarial" and step % self.d_every == 0:
            logged.update(self._discriminator_step(batch, outputs[0]))
        return logged


@toolbox.hookimpl
def register_generators(register):
    register("efficient_unet", EfficientUNet, aliases=("adl_denoiser",),
             example={"filters": (4, 6, 8), "bridge": 8, "enhancer_kernel": 3})


@toolbox.hookimpl
def register_discriminators(register):
    register("efficient_unet_discriminator", EfficientUNetDiscriminator, aliases=("adl_discriminator",),
             example={"filters": (4, 4, 8), "bridge": 8})


@toolbox.hookimpl
def register_losses(register):
    register("pyramid_texture", PyramidTextureLoss, aliases=("pyramid",))
    register("histogram", HistogramLoss)
    register("adl", ADLLoss)


@toolbox.hookimpl
def register_schemes(register):
    register("adl", ADLScheme)
