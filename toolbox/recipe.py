"""Recipes: strict YAML, no code.  Unknown keys are errors that name the file and key path.

A recipe names each part as ``{type: NAME, ...options}``; the part's options are checked
against the registered factory (``toolbox.registry``), everything else against ``SCHEMA``.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from toolbox.errors import RecipeError
from toolbox.registry import did_you_mean


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``)."""


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.yaml_implicit_resolvers = copy.deepcopy(yaml.SafeLoader.yaml_implicit_resolvers)
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise RecipeError(f"not valid YAML{where}: {problem}", source) from error


# -- schema ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Value:
    types: tuple
    default: Any = None
    required: bool = False
    choices: tuple = ()
    help: str = ""


@dataclass(frozen=True)
class Part:
    kind: str
    required: bool = False


@dataclass(frozen=True)
class PartMap:
    kind: str


@dataclass(frozen=True)
class Section:
    fields: dict
    required: bool = False
    absent_is_none: bool = False  # an optional section left out stays None (not defaults)


PATHS = (str, list)
NUMBER = (int, float)

NORMALIZE = Section(
    {
        "type": Value((str,), default="percentile", choices=("window", "percentile", "scale", "minmax", "none")),
        "low": Value(NUMBER),
        "high": Value(NUMBER),
        "floor": Value(NUMBER, help="the images' lowest value in their own units (0 for magnitude MR, photon "
                                    "counts): denoised values below it are raised to it"),
    },
)
# A ``data.train`` entry from another source than the rest, normalised its own way (a
# radiograph among CT slices): its images in their units, mapped to the same 0..1 footing.
TRAIN_SOURCE = Section(
    {
        "images": Value(PATHS, required=True, help="folder(s) or file(s)"),
        "normalize": NORMALIZE,
    },
)

SCHEMA = Section(
    {
        "name": Value((str,), help="a short name for the run folder"),
        "description": Value((str,)),
        "seed": Value((int,), default=0),
        "profiles": Value((dict,), help="named sets of KEY.PATH: VALUE overrides (--profile)"),
        "data": Section(
            {
                "train": Value(PATHS, help="clean training images: folder(s) or file(s); an entry "
                                           "{images: PATHS, normalize: {...}} is normalised its own way"),
                "val": Value(PATHS, help="held-out clean images for validation"),
                "paired": Section(
                    {
                        "train_noisy": Value(PATHS),
                        "train_clean": Value(PATHS),
                        "val_noisy": Value(PATHS),
                        "val_clean": Value(PATHS),
                    },
                    absent_is_none=True,
                ),
                "spatial_dims": Value((int,), default=2, choices=(2, 3)),
                "channels": Value((int,), default=1),
                "context_slices": Value((int,), default=1,
                                        help="2.5D: odd number of adjacent slices as channels"),
                "normalize": NORMALIZE,
                "patch_size": Value((list,), required=True, help="the generator's input patch"),
                "scale": Value((int,), default=1, choices=(1, 2, 4),
                               help="super-resolution: the output has scale x the input's size along every "
                                    "spatial axis (the noise model or paired data makes low-resolution inputs)"),
                "noise": Part("noise_models"),
                "noise_copies": Value((int,), default=4,
                                      help="whole-image noise (low_dose_ct): noisy copies per training image"),
                "reader": Part("readers"),
                "augment": Value((bool,), default=True),
                "target": Value((str,), default="clean", choices=("clean", "noisy_copy"),
                                help="noisy_copy: the target is a second noise draw (Noise2Noise)"),
                "frame_pairs": Value((bool,), default=False,
                                     help="Noise2Noise on stacks: frame t as input, frame t + 1 as target"),
                "val_seed": Value((int,), default=12345),
                "noise_level_map": Value((bool,), default=False,
                                         help="give the generator the noise level as an extra input channel "
                                              "(FFDNet); denoise takes --sigma or estimates it"),
                "reference_noise": Value((bool,), default=False,
                                         help="the clean images carry noise of their own (real camera or "
                                              "scanner images): the level given in training adds it, as the "
                                              "estimate in use sees it (needs noise_level_map)"),
            },
            required=True,
        ),
        "generator": Part("generators", required=True),
        "discriminator": Part("discriminators"),
        "losses": PartMap("losses"),
        "optimizers": PartMap("optimizers"),
        "scheme": Part("schemes", required=True),
        "inversion": Section(
            {
                "starts": Value((int,), default=8, help="random latent starts searched together (seed: 10)"),
                "steps": Value((int,), default=100, help="Adam steps on every start (seed: m = 1500)"),
                "max_steps": Value((int,), default=300,
                                   help="further steps on the best start (seed: n = 10000)"),
                "eps": Value(NUMBER, default=0.0, help="stop once the best start's loss is below this"),
                "lr": Value(NUMBER, default=0.01, help="Adam's rate on the latents (the seed's finding)"),
                "loss": Value((str,), default="mse", choices=("mse", "poisson")),
                "counts_per_unit": Value(NUMBER, help="poisson: counts per unit of the image's intensity "
                                                      "(1 if the image is in counts)"),
                "prior": Value(NUMBER, default=0.0, help="weight of the N(0, 1) latent prior, mean(z^2)"),
                "seed": Value((int,), default=0, help="seed of the random starts"),
                "residual": Value((str,), default="none", choices=("none", "shrink"),
                                  help="shrink: add back the part of noisy - G(z) that is more than noise "
                                       "(scalar Wiener gain per window; not in the seed)"),
                "sigma": Value(NUMBER, help="noise SD in the image's units for residual: shrink (default: "
                                            "from the Poisson counts, else estimated from each image)"),
            },
            absent_is_none=True,
        ),
        "train": Section(
            {
                "steps": Value((int,), required=True, help="generator steps"),
                "batch_size": Value((int,), default=4, help="per process (torchrun: per rank)"),
                "device": Value((str,), default="auto", choices=("auto", "cpu", "cuda")),
                "amp": Value((bool, str), default=False, choices=(False, True, "bf16", "fp16")),
                "find_unused_parameters": Value((bool,), default=False,
                                                help="DDP: networks with parameters some steps do not use"),
                "channels_last": Value((bool,), default=False,
                                       help="channels-last memory layout (faster convolutions on recent GPUs)"),
                "init_from": Value((str,), help="start the generator from these weights: a pretrained "
                                                "model's name, a run folder or a checkpoint"),
                "ema": Value((float, int), default=0.0,
                             help="decay of an average of the generator's weights used for validation "
                                  "and inference (e.g. 0.999); 0 = off"),
                "lr_schedule": Value((dict,), help="every optimizer's rate over the run: {type: constant | "
                                                   "step (every, factor) | multistep (milestones, factor) | "
                                                   "cosine (min_factor, steps)}, each with warmup"),
                "best": Value((str,), default="psnr", choices=("psnr", "last"),
                              help="which validated checkpoint is best.pt (what denoise and evaluate use): "
                                   "the highest validation PSNR, or the last (texture fine-tuning, where "
                                   "PSNR prefers the least adversarial step)"),
                "val_every": Value((int,), default=100),
                "log_every": Value((int,), default=10),
                "checkpoint_every": Value((int,), default=100),
                "num_workers": Value((int,), default=0),
                "val_overlap": Value((float, int), default=0.25),
                "val_max_images": Value((int,), default=0, help="0 = all"),
            },
            required=True,
        ),
    },
    required=True,
)


def _type_name(types: tuple) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true/false",
             list: "a list", dict: "a mapping"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _validate(node, schema, source: str, path: str):
    if isinstance(schema, Value):
        if node is None:
            if schema.required:
                raise RecipeError("is required", source, path)
            return copy.deepcopy(schema.default)
        ok = isinstance(node, schema.types) and not (
            isinstance(node, bool) and bool not in schema.types
        )
        if float in schema.types and isinstance(node, int) and not isinstance(node, bool):
            ok = True
            node = float(node)
        if not ok:
            raise RecipeError(
                f"expected {_type_name(schema.types)}, got {node!r}", source, path
            )
        if schema.choices and node not in schema.choices:
            raise RecipeError(
                f"{node!r} is not one of {', '.join(map(str, schema.choices))}", source, path
            )
        return node
    if isinstance(schema, (Part, PartMap)):
        if node is None:
            if isinstance(schema, Part) and schema.required:
                raise RecipeError("is required: give {type: NAME, ...}", source, path)
            return {} if isinstance(schema, PartMap) else None
        if isinstance(schema, Part):
            if isinstance(node, str):
                node = {"type": node}
            if not isinstance(node, dict):
                raise RecipeError("expected a mapping {type: NAME, ...options}", source, path)
            return node
        if not isinstance(node, dict):
            raise RecipeError("expected a mapping of name: {type: NAME, ...}", source, path)
        return {
            key: _validate(value, Part(schema.kind, required=True), source, f"{path}.{key}")
            for key, value in node.items()
        }
    # Section
    if node is None:
        if schema.required:
            raise RecipeError("is required", source, path or None)
        if schema.absent_is_none:
            return None
        node = {}
    if not isinstance(node, dict):
        raise RecipeError("expected a mapping", source, path or None)
    result = {}
    for key in node:
        if key not in schema.fields:
            raise RecipeError(
                f"unknown key '{key}'.{did_you_mean(str(key), schema.fields)} "
                f"Allowed here: {', '.join(schema.fields)}.",
                source, f"{path}.{key}" if path else str(key),
            )
    for key, sub in schema.fields.items():
        result[key] = _validate(node.get(key), sub, source, f"{path}.{key}" if path else key)
    return result


# -- overrides -------------------------------------------------------------------------------
def apply_override(recipe: dict, assignment: str, source: str) -> None:
    """Apply ``key.path=value``; the value is parsed as YAML (never evaluated)."""
    if "=" not in assignment:
        raise RecipeError(
            f"override '{assignment}' must look like key.path=value", "command line"
        )
    dotted, text = assignment.split("=", 1)
    keys = [k for k in dotted.strip().split(".")]
    if not all(keys):
        raise RecipeError(f"override '{assignment}' has an empty key", "command line")
    value = parse_yaml(text, f"command line override '{assignment}'")
    node = recipe
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if isinstance(child, str) and depth == len(keys) - 2:  # `generator: unet` shorthand
            child = node[key] = {"type": child}
        if not isinstance(child, dict):
            raise RecipeError(
                f"cannot set '{dotted}': '{'.'.join(keys[:depth + 1])}' is not a mapping",
                "command line",
            )
        node = child
    node[keys[-1]] = value


# -- paths -----------------------------------------------------------------------------------
def _resolve_paths(value, base: Path):
    if value is None:
        return None
    if isinstance(value, list):
        return [_resolve_paths(v, base) for v in value]
    path = Path(str(value)).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _train_sources(value, source: str, base: Path):
    """``data.train`` with its paths resolved; ``{images, normalize}`` entries validated."""
    if not isinstance(value, list):
        return _resolve_paths(value, base)
    entries = []
    for index, entry in enumerate(value):
        where = f"data.train[{index}]"
        if isinstance(entry, dict):
            entry = _validate(entry, TRAIN_SOURCE, source, where)
            _check_normalize(entry["normalize"], source, f"{where}.normalize")
            entry["images"] = _resolve_paths(entry["images"], base)
        elif not isinstance(entry, str):
            raise RecipeError(f"expected a path or {{images: PATHS, normalize: {{...}}}}, got {entry!r}",
                              source, where)
        else:
            entry = _resolve_paths(entry, base)
        entries.append(entry)
    return entries


def train_sources(data: dict) -> list[tuple[object, dict]]:
    """``(paths, normalize spec)`` for each entry of a validated recipe's ``data.train``:
    its own spec for an ``{images, normalize}`` entry, ``data.normalize`` for the rest."""
    value = data.get("train")
    if value is None:
        return []
    entries = value if isinstance(value, list) else [value]
    return [(entry["images"], entry["normalize"]) if isinstance(entry, dict) else (entry, data["normalize"])
            for entry in entries]


# -- public ----------------------------------------------------------------------------------
@dataclass
class Recipe:
    data: dict
    source: str  # file name, for error messages
    profile: str | None = None  # the profile applied, if any

    def __getitem__(self, key):
        return self.data[key]

    def get(self, key, default=None):
        return self.data.get(key, default)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.data, sort_keys=False)


def apply_profile(raw: dict, profile: str, source: str) -> None:
    """Apply the recipe's ``profiles.<profile>`` overrides (``key.path: value`` pairs)."""
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise RecipeError("expected a mapping of profile name -> {key.path: value}", source, "profiles")
    if profile not in profiles:
        raise RecipeError(
            f"no profile '{profile}'.{did_you_mean(profile, profiles)} "
            f"Profiles here: {', '.join(profiles) or '(none)'}", source, "profiles")
    settings = profiles[profile]
    if not isinstance(settings, dict):
        raise RecipeError("expected a mapping of key.path: value", source, f"profiles.{profile}")
    for dotted, value in settings.items():
        apply_override(raw, f"{dotted}={yaml.safe_dump(value, default_flow_style=True).strip()}",
                       f"{source}, profile '{profile}'")


def load_recipe(path, overrides=(), registry=None, profile: str | None = None) -> Recipe:
    """Read, override and check a recipe; with a ``registry``, every part's type and options
    are checked against it too (nothing is built)."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise RecipeError(f"no such recipe file (looked in {path.resolve().parent})", source)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RecipeError(f"cannot read: {error}", source) from error
    raw = parse_yaml(text, source)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError("a recipe must be a mapping of sections (data, generator, ...)", source)
    if profile:
        apply_profile(raw, profile, source)
    for assignment in overrides:
        apply_override(raw, assignment, source)
    recipe = validate(raw, source, base=path.resolve().parent, registry=registry)
    recipe.profile = profile
    return recipe


def validate(raw: dict, source: str, base: Path | None = None, registry=None) -> Recipe:
    data = _validate(raw, SCHEMA, source, "")
    base = base or Path.cwd()
    section = data["data"]
    section["train"] = _train_sources(section.get("train"), source, base)
    section["val"] = _resolve_paths(section.get("val"), base)
    if section.get("paired"):
        section["paired"] = {k: _resolve_paths(v, base) for k, v in section["paired"].items()}
    _check_data(section, source)
    init = data["train"]["init_from"]
    if init and (base / init).exists():  # a path relative to the recipe; else a model name
        data["train"]["init_from"] = str((base / init).resolve())
    ema = data["train"]["ema"]
    if ema and not 0.0 < ema < 1.0:
        raise RecipeError(f"a decay between 0 and 1 (e.g. 0.999), or 0 for none; got {ema}", source, "train.ema")
    if data["train"]["lr_schedule"] is not None:
        from toolbox.lr_schedule import LearningRateSchedule

        LearningRateSchedule(data["train"]["lr_schedule"], data["train"]["steps"], source)  # checks the keys
    if registry is not None:
        check_parts_against_registry(data, source, registry)
    return Recipe(data, source)


def _check_data(section: dict, source: str) -> None:
    dims = section["spatial_dims"]
    patch = section["patch_size"]
    if len(patch) != dims or not all(isinstance(p, int) and p > 0 for p in patch):
        raise RecipeError(
            f"expected {dims} positive integers (one per spatial axis), got {patch!r}",
            source, "data.patch_size",
        )
    if section["scale"] > 1:
        clash = [key for key, on in (("context_slices", section["context_slices"] > 1),
                                     ("noise_level_map", section["noise_level_map"]),
                                     ("target: noisy_copy", section["target"] == "noisy_copy"),
                                     ("frame_pairs", section["frame_pairs"])) if on]
        if clash:
            raise RecipeError(f"super-resolution (scale {section['scale']}) does not combine with "
                              f"{', '.join(clash)}", source, "data.scale")
    context = section["context_slices"]
    if context < 1 or context % 2 == 0:
        raise RecipeError(f"must be an odd number >= 1, got {context}", source, "data.context_slices")
    if context > 1 and dims != 2:
        raise RecipeError("2.5D stacks need spatial_dims: 2 (slices of 3D volumes)", source,
                          "data.context_slices")
    has_paired = bool((section.get("paired") or {}).get("train_noisy"))
    if not has_paired and not section.get("train"):
        raise RecipeError("give data.train (clean images) or data.paired.train_noisy / train_clean", source, "data")
    if not has_paired and section.get("noise") is None:
        raise RecipeError(
            "synthetic pairs need a noise model, e.g. {type: gaussian, sigma: 0.1}",
            source, "data.noise",
        )
    if not (section.get("paired") or {}).get("val_noisy") and section.get("val") and section.get("noise") is None:
        raise RecipeError("held-out images (data.val) without noisy counterparts (data.paired.val_noisy) "
                          "need a noise model to score on", source, "data.noise")
    if section["reference_noise"] and not section["noise_level_map"]:
        raise RecipeError("reference_noise changes the level given to a noise-conditional generator; "
                          "set data.noise_level_map: true too, or drop it", source, "data.reference_noise")
    if section["noise_level_map"] and section["frame_pairs"]:
        raise RecipeError("the noise level is measured against clean images; frame pairs have none",
                          source, "data.noise_level_map")
    _check_normalize(section["normalize"], source, "data.normalize")
    own = [index for index, entry in enumerate(section["train"] if isinstance(section["train"], list) else [])
           if isinstance(entry, dict)]
    if own and (section["frame_pairs"] or (section.get("paired") or {}).get("train_noisy")):
        raise RecipeError("an entry normalised its own way is for clean training images with a noise model; "
                          "frame pairs and paired data use data.normalize", source, f"data.train[{own[0]}]")


def _check_normalize(norm: dict, source: str, where: str) -> None:
    if norm.get("type") == "window" and (norm.get("low") is None or norm.get("high") is None):
        raise RecipeError("a window needs low and high", source, where)
    if norm.get("low") is not None and norm.get("high") is not None and norm["low"] >= norm["high"]:
        raise RecipeError("low must be below high", source, where)
    if norm.get("type", "percentile") in ("percentile", "scale"):
        for key in ("low", "high"):
            if norm.get(key) is not None and not 0 <= norm[key] <= 100:
                raise RecipeError(f"a percentage between 0 and 100, got {norm[key]}", source, f"{where}.{key}")


def check_parts_against_registry(data: dict, source: str, registry) -> None:
    """Every part's type exists and its options fit the factory (nothing is built)."""
    from toolbox.registry import INJECTED

    registry.check("generators", data["generator"], source, "generator", injected=INJECTED["generators"])
    if data.get("discriminator"):
        registry.check("discriminators", data["discriminator"], source, "discriminator",
                       injected=INJECTED["discriminators"])
    for name, spec in data["losses"].items():
        registry.check("losses", spec, source, f"losses.{name}")
        weight = spec.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise RecipeError(f"expected a number, got {weight!r}", source, f"losses.{name}.weight")
    for name, spec in data["optimizers"].items():
        registry.check("optimizers", spec, source, f"optimizers.{name}", injected=INJECTED["optimizers"])
    registry.check("schemes", data["scheme"], source, "scheme", injected=INJECTED["schemes"])
    if data["data"].get("noise") is not None:
        registry.check("noise_models", data["data"]["noise"], source, "data.noise")
    if data["data"].get("reader") is not None:
        registry.check("readers", data["data"]["reader"], source, "data.reader")
