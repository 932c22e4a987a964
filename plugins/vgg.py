"""VGG19 perceptual loss that works offline (CNN-VGG / WGAN-VGG, ESRGAN).

The VGG19 ``features`` network is defined here with torchvision's layer indices (convs at
0, 2, 5, 7, 10, ..., 34; ReLU after each; max-pools at 4, 9, 18, 27, 36), so a torchvision
``vgg19`` state dict (``vgg19-dcbb9e9d.pth``) loads directly; torchvision itself is not
needed.  Weights come from ``weights: PATH``, the ``TOOLBOX_VGG19_WEIGHTS`` variable, or a
cache (``~/.cache/toolbox`` or torch's hub cache); ``toolbox weights vgg19`` fetches and
verifies torchvision's file on a machine with internet.  Nothing is downloaded at run time.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import toolbox
from toolbox import ToolboxError

VGG19_FILE = "vgg19-dcbb9e9d.pth"
VGG19_URL = f"https://download.pytorch.org/models/{VGG19_FILE}"
VGG19_SHA256_PREFIX = "dcbb9e9d"  # torchvision names files by their hash's first 8 digits
_CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
           512, 512, 512, 512, "M"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_features() -> torch.nn.Sequential:
    """VGG19 ``features`` with torchvision's indices (so its state dict keys match)."""
    layers, channels = [], 3
    for item in _CONFIG:
        if item == "M":
            layers.append(torch.nn.MaxPool2d(2, 2))
        else:
            layers += [torch.nn.Conv2d(channels, item, 3, padding=1), torch.nn.ReLU(inplace=False)]
            channels = item
    return torch.nn.Sequential(*layers)


def layer_indices() -> dict[str, int]:
    """Names like ``conv3_4`` / ``relu5_4`` / ``pool2`` -> index in ``features``."""
    names, block, conv, index = {}, 1, 1, 0
    for item in _CONFIG:
        if item == "M":
            names[f"pool{block}"] = index
            index += 1
            block, conv = block + 1, 1
        else:
            names[f"conv{block}_{conv}"] = index
            names[f"relu{block}_{conv}"] = index + 1
            index += 2
            conv += 1
    return names


def cache_candidates() -> list[Path]:
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    return [Path.home() / ".cache" / "toolbox" / VGG19_FILE, torch_home / "hub" / "checkpoints" / VGG19_FILE]


def find_weights(weights: str | None) -> Path:
    if weights not in (None, "", "auto"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ToolboxError(f"{path}: no such VGG19 weights file; {_how_to_get()}")
        return path
    if os.environ.get("TOOLBOX_VGG19_WEIGHTS"):
        return find_weights(os.environ["TOOLBOX_VGG19_WEIGHTS"])
    for candidate in cache_candidates():
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in cache_candidates())
    raise ToolboxError(f"VGG19 weights not found (looked in {looked}); {_how_to_get()}")


def _how_to_get() -> str:
    return ("run `toolbox weights vgg19` on a machine with internet (fetches torchvision's "
            f"{VGG19_FILE} and checks its SHA-256), copy the file to ~/.cache/toolbox/, or give "
            "its path as `weights:` in the perceptual loss")


def load_vgg19_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001
        raise ToolboxError(f"{path}: not a loadable VGG19 state dict ({str(error)[:160]})") from error
    if not isinstance(state, dict):
        raise ToolboxError(f"{path}: not a state dict")
    # Accept torchvision's full model (features.* + classifier.*) or the features alone.
    features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    features = features or {k: v for k, v in state.items() if k.split(".")[0].isdigit()}
    expected = vgg19_features().state_dict()
    missing = [k for k in expected if k not in features]
    wrong = [k for k in expected if k in features and features[k].shape != expected[k].shape]
    if missing or wrong:
        raise ToolboxError(f"{path}: not torchvision's VGG19 layout (missing {missing[:3]}, "
                           f"wrong shapes {wrong[:3]})")
    return {k: features[k] for k in expected}


sha256_of = toolbox.sha256_of


class VGGPerceptualLoss(torch.nn.Module):
    """Distance between VGG19 features of prediction and target (L1 or MSE), per named layer.

    ``layers``: name -> weight, e.g. ``{conv5_4: 1.0}`` (pre-activation, as ESRGAN and
    WGAN-VGG use) or ``{relu3_4: 0.5, relu5_4: 1.0}``.  Grey images are repeated to three
    channels; images in 0..1 are ImageNet-normalised.  3D inputs are cut into 2D slices
    along ``slice_axis`` (0, 1, 2 or ``all`` for the mean over the three).
    ``random_weights: true`` skips the pretrained weights (for tests only; warns).
    ``input_normalization``: ``imagenet`` (torchvision's statistics, as VGG was trained) or
    ``none`` (the image as it is: seed 002's public code feeds its patches so).
    """

    compare = "features"

    def __init__(self, layers=None, weights: str | None = None, criterion: str = "l1",
                 slice_axis="all", random_weights: bool = False, input_normalization: str = "imagenet"):
        super().__init__()
        if input_normalization not in ("imagenet", "none"):
            raise ValueError(f"input_normalization must be imagenet or none, got {input_normalization!r}")
        self.imagenet = input_normalization == "imagenet"
        layers = dict(layers or {"conv5_4": 1.0})
        names = layer_indices()
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise ValueError(f"unknown VGG19 layer(s) {unknown}; e.g. conv1_2, relu3_4, conv5_4")
        if criterion not in ("l1", "mse"):
            raise ValueError(f"criterion must be l1 or mse, got {criterion!r}")
        if slice_axis not in (0, 1, 2, "all"):
            raise ValueError(f"slice_axis must be 0, 1, 2 or all, got {slice_axis!r}")
        features = vgg19_features()
        if random_weights:
            warnings.warn("VGG perceptual loss with RANDOM weights: not a perceptual loss", stacklevel=2)
        else:
            features.load_state_dict(load_vgg19_state(find_weights(weights)))
        deepest = max(names[n] for n in layers)
        self.features = features[: deepest + 1].eval()
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.taps = {names[n]: float(w) for n, w in layers.items()}
        # Each max-pool before the deepest tap halves the image: a 2D slice needs at least
        # 2**pools pixels along each axis (conv5_4 after four pools: 16).
        self.min_size = 2 ** sum(1 for n, i in names.items() if n.startswith("pool") and i <= deepest)
        self.deepest_name = max(layers, key=lambda n: names[n])
        self.criterion = F.l1_loss if criterion == "l1" else F.mse_loss
        self.slice_axis = slice_axis
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def usable_axes(self, spatial_size) -> tuple[int, ...]:
        """The 3D slice axes whose 2D slices are large enough for the deepest tapped layer."""
        axes = (0, 1, 2) if self.slice_axis == "all" else (self.slice_axis,)
        return tuple(a for a in axes
                     if min(s for i, s in enumerate(spatial_size) if i != a) >= self.min_size)

    def check_patch(self, patch_size) -> None:
        """Called with ``data.patch_size`` when the recipe's parts are built: a patch too thin
        for the deepest layer is an error naming the smallest size that works; with
        ``slice_axis: all`` the orientations that are too thin are skipped, with a warning."""
        size = tuple(int(s) for s in patch_size)
        shown = "x".join(map(str, size))
        if len(size) == 2:
            if min(size) < self.min_size:
                raise ValueError(f"patch {shown} is too small for VGG19 layer {self.deepest_name} "
                                 f"(it needs at least {self.min_size}x{self.min_size}); use a larger "
                                 "data.patch_size or a shallower layer")
            return
        usable = self.usable_axes(size)
        if not usable:
            axes = "any orientation" if self.slice_axis == "all" else f"slice_axis {self.slice_axis}"
            raise ValueError(f"patch {shown} is too thin for VGG19 layer {self.deepest_name} in {axes} "
                             f"(its 2D slices need at least {self.min_size} voxels along each axis); "
                             "use a larger data.patch_size or a shallower layer")
        skipped = sorted(set((0, 1, 2) if self.slice_axis == "all" else (self.slice_axis,)) - set(usable))
        if skipped:
            warnings.warn(f"vgg_perceptual: patch {shown} is too thin for {self.deepest_name} across "
                          f"axis {', '.join(map(str, skipped))}; those slices are skipped (the loss uses "
                          f"slices across axis {', '.join(map(str, usable))})", stacklevel=2)

    def train(self, mode: bool = True):  # the frozen network stays in eval mode
        return super().train(False)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, *[1] * (x.ndim - 2))
        elif x.shape[1] != 3:
            raise ValueError(f"VGG perceptual loss needs 1 or 3 channels, got {x.shape[1]}")
        return (x - self.mean) / self.std if self.imagenet else x

    def _features(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        out = {}
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                out[index] = x
        return out

    def _loss_2d(self, prediction, target):
        pred, targ = self._features(self._prepare(prediction)), self._features(self._prepare(target))
        if self.compare == "gram":
            pred, targ = ({i: gram_matrix(f) for i, f in maps.items()} for maps in (pred, targ))
        return sum(w * self.criterion(pred[i], targ[i]) for i, w in self.taps.items())

    @staticmethod
    def _slices(x: torch.Tensor, axis: int) -> torch.Tensor:
        moved = x.movedim(2 + axis, 1)  # (N, S, C, a, b)
        return moved.reshape(-1, x.shape[1], *moved.shape[3:])

    def forward(self, prediction, target):
        prediction, target = prediction.float(), target.float()
        if prediction.ndim == 4:
            return self._loss_2d(prediction, target)
        axes = self.usable_axes(prediction.shape[2:])
        if not axes:
            self.check_patch(prediction.shape[2:])  # raises, naming the smallest size
        return sum(self._loss_2d(self._slices(prediction, a), self._slices(target, a)) for a in axes) / len(axes)


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """``(N, C, h, w) -> (N, C, C)``: the channels' correlations over the image, divided by
    the number of entries so that the size of the slice does not set the loss's scale."""
    flat = features.flatten(2)
    return flat @ flat.transpose(1, 2) / flat.shape[1:].numel()


class GramTextureLoss(VGGPerceptualLoss):
    """Gatys et al.'s texture (style) loss, as EnhanceNet uses it and seed 002 compares it
    with the perceptual loss: the distance between Gram matrices of VGG19 features, which
    keeps the texture statistics and drops where things are.  Options as
    ``vgg_perceptual``'s (seed 002: ``layers: {conv3_4: 1}``)."""

    compare = "gram"


def download_vgg19(output: Path) -> Path:
    """Fetch torchvision's VGG19 weights, check the SHA-256 prefix, write atomically."""
    import urllib.request

    from toolbox import atomic_write

    def fetch(tmp: Path) -> None:
        with urllib.request.urlopen(VGG19_URL, timeout=60) as response, open(tmp, "wb") as handle:  # noqa: S310
            while chunk := response.read(1 << 20):
                handle.write(chunk)
        digest = sha256_of(tmp)
        if not digest.startswith(VGG19_SHA256_PREFIX):
            raise ToolboxError(f"downloaded {VGG19_URL} has SHA-256 {digest[:16]}..., expected "
                               f"{VGG19_SHA256_PREFIX}...; not saved")

    try:
        atomic_write(output, fetch)
    except OSError as error:
        raise ToolboxError(f"cannot fetch {VGG19_URL} ({error}); download it elsewhere and copy it "
                           f"to {output}") from error
    return output


def _cmd_weights(args) -> int:
    output = Path(args.output) if args.output else cache_candidates()[0]
    if output.exists() and not args.force:
        print(f"{output} exists (SHA-256 {sha256_of(output)[:16]}...); --force to fetch again")
        return 0
    download_vgg19(output)
    print(f"wrote {output}")
    return 0


@toolbox.hookimpl
def register_losses(register):
    register("vgg_perceptual", VGGPerceptualLoss, aliases=("perceptual", "vgg19"),
             example={"layers": {"conv2_2": 1.0}, "random_weights": True})
    register("gram_texture", GramTextureLoss, aliases=("texture_gram",),
             example={"layers": {"conv2_2": 1.0}, "random_weights": True})


@toolbox.hookimpl
def register_commands(cli):
    parser = cli.add_parser("weights", help="fetch pretrained weights the losses need (needs internet)")
    parser.add_argument("name", choices=["vgg19"], help="vgg19: torchvision's VGG19 (548 MB)")
    parser.add_argument("--output", help=f"where to write (default ~/.cache/toolbox/{VGG19_FILE})")
    parser.add_argument("--force", action="store_true", help="fetch even if the file exists")
    parser.set_defaults(func=_cmd_weights)
