"""Pretrained models by name (``toolbox models``, ``toolbox denoise --model NAME``).

A pretrained model is an ordinary toolbox checkpoint, packed small: the resolved recipe
and the generator's weights (the weight average when the run kept one) in half precision,
without optimiser state (``pack``).  Plugins register them with ``register_models``; the
built-in ones live in ``toolbox_plugins/pretrained/``, each with a model card beside it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from toolbox.checkpoint import FORMAT, generator_weights, load_checkpoint, save_checkpoint
from toolbox.errors import ToolboxError


@dataclass(frozen=True)
class HostedModel:
    """A pretrained model kept outside the package (``register_models`` factories may return
    one instead of a path): fetched once from ``url`` into the cache, checked against
    ``sha256``, and read from there afterwards.  ``card`` is the model card's text (it goes
    beside the cached file).  Offline machines put the file in the cache themselves, or pass
    its path as MODEL."""

    url: str
    sha256: str
    filename: str = ""
    card: str = ""

    @property
    def name(self) -> str:
        return self.filename or self.url.rstrip("/").rsplit("/", 1)[-1] or "model.pt"


def cache_folder() -> Path:
    """Where hosted models are kept: ``$TOOLBOX_CACHE`` or ``~/.cache/toolbox``, then ``models/``."""
    root = os.environ.get("TOOLBOX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "toolbox")
    return Path(root) / "models"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_file(hosted: HostedModel) -> Path:
    return cache_folder() / hosted.sha256[:16] / hosted.name


def fetch_hosted(name: str, hosted: HostedModel) -> Path:
    """The cached, hash-checked file of ``hosted``, downloaded first when it is not cached.
    A download that does not match its SHA-256 is deleted and refused."""
    import urllib.request

    from toolbox.checkpoint import atomic_write

    target = cached_file(hosted)
    if target.is_file():
        if sha256_of(target) == hosted.sha256:
            return _with_card(target, hosted)
        target.unlink()  # a damaged or replaced cache entry: fetched again
    if os.environ.get("TOOLBOX_OFFLINE") not in (None, "", "0"):
        raise ToolboxError(f"pretrained model '{name}' is not in the cache and TOOLBOX_OFFLINE is set: download "
                           f"{hosted.url} (SHA-256 {hosted.sha256}) to {target}, or pass the file's path as MODEL")

    def download(tmp: Path) -> None:
        try:
            with urllib.request.urlopen(hosted.url, timeout=60) as response, open(tmp, "wb") as handle:
                shutil.copyfileobj(response, handle)
        except OSError as error:
            raise ToolboxError(f"pretrained model '{name}': could not download {hosted.url} ({error}); on an "
                               f"offline machine put the file at {target}, or pass its path as MODEL") from error
        found = sha256_of(tmp)
        if found != hosted.sha256:
            raise ToolboxError(f"pretrained model '{name}': {hosted.url} has SHA-256 {found}, the registration says "
                               f"{hosted.sha256}; nothing was kept")

    atomic_write(target, download)
    return _with_card(target, hosted)


def _with_card(path: Path, hosted: HostedModel) -> Path:
    card = card_file(path)
    if hosted.card and not card.is_file():
        card.write_text(hosted.card, encoding="utf-8")
    return path


def model_file(registry, name: str) -> Path:
    """The checkpoint file of the pretrained model ``name`` (a hosted one: cached and checked)."""
    component = registry.get("models", name, "--model", "model")
    located = component.factory()
    if isinstance(located, HostedModel):
        return fetch_hosted(name, located)
    path = Path(located)
    if not path.is_file():
        raise ToolboxError(f"pretrained model '{name}' (plugin '{component.plugin}'): its file {path} is missing")
    return path


def card_file(path: Path) -> Path:
    return Path(path).with_suffix(".md")


# What a checkpoint's generator takes and gives: equal for two checkpoints' weights to be
# interchangeable (interpolation, initialisation).
INTERFACE = ("spatial_dims", "channels", "context_slices", "normalize", "noise_level_map")


def _input_side(key: str, value):
    """What of a data setting the generator's input depends on: a normalisation's map (its
    ``floor`` only bounds the output; unset options are the same as absent ones)."""
    if key != "normalize" or not isinstance(value, dict):
        return value
    return {k: v for k, v in value.items() if k != "floor" and v is not None}


def check_same_generator(recipe: dict, other: dict, where: str, other_name: str) -> None:
    """A one-line error unless ``other``'s generator is ``recipe``'s, with the same inputs."""
    if recipe["generator"] != other["generator"]:
        raise ToolboxError(f"{where}: the generator {recipe['generator']} differs from {other_name}'s "
                           f"{other['generator']}")
    for key in INTERFACE:
        mine, theirs = _input_side(key, recipe["data"].get(key)), _input_side(key, other["data"].get(key))
        if mine != theirs:
            raise ToolboxError(f"{where}: data.{key} is {mine!r}, {other_name} has {theirs!r}; "
                               "the generators must take the same input")


def resolve(registry, model: str) -> Path:
    """A pretrained model's name, a run folder or a checkpoint file, as a checkpoint file."""
    from toolbox.infer import find_checkpoint

    if model in registry.components("models") and not Path(model).exists():  # a folder named "ct" wins
        return model_file(registry, model)
    return find_checkpoint(Path(model))


def initial_weights(registry, recipe: dict, model: str, where: str) -> dict:
    """The generator weights a run starts from (``train.init_from``): a pretrained model,
    run folder or checkpoint whose generator is the recipe's."""
    path = resolve(registry, model)
    payload = load_checkpoint(path)
    check_same_generator(recipe, payload["recipe"], where, str(path))
    return {k: v.float() if v.is_floating_point() else v for k, v in generator_weights(payload).items()}


def describe(registry) -> list[dict]:
    """One row per registered model: name, plugin, file, size, dims, noise, card summary."""
    rows = []
    for name, component in registry.components("models").items():
        row = {"name": name, "plugin": component.plugin}
        try:
            located = component.factory()
            if isinstance(located, HostedModel) and not cached_file(located).is_file():
                # Listing never downloads: a hosted model is described from its registration.
                title = next((line.lstrip("#").strip() for line in located.card.splitlines() if line.strip()), "")
                row.update(file=located.url, megabytes=0.0, dims="?", noise=None, card=None,
                           summary=(title.split(":", 1)[1].strip() if title.startswith(f"{name}:") else title)
                           + " (not downloaded yet)")
                rows.append(row)
                continue
            path = model_file(registry, name)
            recipe = load_checkpoint(path)["recipe"]
            card = card_file(path)
            # The card's title, "# NAME: what it is", says what the model is for.
            title = next((line.lstrip("#").strip() for line in card.read_text(encoding="utf-8").splitlines()
                          if line.strip()), "") if card.is_file() else ""
            summary = title.split(":", 1)[1].strip() if title.startswith(f"{name}:") else title
            row.update(file=str(path), megabytes=round(path.stat().st_size / 2**20, 2),
                       dims=f"{recipe['data']['spatial_dims']}D", noise=recipe["data"].get("noise"),
                       card=str(card) if card.is_file() else None, summary=summary)
        except ToolboxError as error:
            row["error"] = str(error)
        rows.append(row)
    return rows


def pack(run: Path, output: Path, half: bool = True, overwrite: bool = False) -> Path:
    """Write ``run``'s best generator (its weight average, if kept) as a small checkpoint."""
    from toolbox.infer import find_checkpoint

    output = Path(output)
    if output.exists() and not overwrite:
        raise ToolboxError(f"{output}: already exists; pass --overwrite to replace it")
    source = find_checkpoint(Path(run))
    payload = load_checkpoint(source)
    weights = {k: (v.half() if half and v.is_floating_point() else v).clone()
               for k, v in generator_weights(payload).items()}
    packed = {"format": FORMAT, "step": payload.get("step"), "recipe": payload["recipe"],
              "scheme": {"modules": {"generator": weights}}, "generator_module": "generator",
              "toolbox_version": payload.get("toolbox_version"), "packed_from": str(source),
              "dtype": "float16" if half else "float32"}
    save_checkpoint(output, packed)
    return output

