"""Contract checks for plugin authors (public API): the checks toolbox runs on its own parts.

Each ``check_*`` builds a registered part from its ``example`` options (given at
registration), exercises it as the training loop and ``toolbox denoise`` will, and raises
``AssertionError`` with the reason when the part breaks the contract of its hook.  The
project's own contract tests call these functions for every registered part, so a third
party's tests can run exactly the same checks:

    import toolbox.testing as contract

    def test_my_generator():
        for dims in (2, 3):
            contract.check_generator("my_net", dims)

``registry`` defaults to the installed plugins (``toolbox.plugin_registry()``).
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path

import numpy as np
import torch

SIZES = {2: (37, 45), 3: (19, 21, 23)}  # odd sizes: networks must pad and crop back

# What one scheme step is checked with: tiny parts every scheme of the built-ins accepts.
_TINY_PARTS = {
    "generator": {"type": "unet", "features": [4, 4, 4, 4, 4, 4]},
    "discriminator": {"type": "patchgan", "base_filters": 4, "num_layers": 2},
    "losses": {"pix": {"type": "l1"}, "adv": {"type": "gan", "mode": "bce", "weight": 0.1}},
    "optimizers": {"generator": {"type": "adam", "lr": 1e-3}, "discriminator": {"type": "adam", "lr": 1e-3}},
}


def _registry(registry):
    if registry is not None:
        return registry
    from toolbox.plugins import get_registry

    return get_registry()


def build_example(kind: str, name: str, registry=None, **injected):
    """The part ``name`` of ``kind`` built from its registered ``example`` options."""
    registry = _registry(registry)
    component = registry.components(kind)[name]
    return registry.build(kind, {"type": name, **component.example}, **injected)


def _outputs(output) -> list[torch.Tensor]:
    return list(output) if isinstance(output, (tuple, list)) else [output]


def check_generator(name: str, spatial_dims: int, registry=None) -> None:
    """Any size in, the same size out (first output), finite; gradients reach every weight.
    A generator from a latent vector (it has ``latent_dim`` and ``image_size``, as DCGAN's):
    ``(N, latent_dim)`` in, ``(N, C, *image_size)`` out, in 0..1."""
    torch.manual_seed(0)
    net = build_example("generators", name, registry, spatial_dims=spatial_dims, in_channels=1, out_channels=1)
    if getattr(net, "latent_dim", None):
        _check_latent_generator(name, net, spatial_dims)
        return
    x = torch.rand(2, 1, *SIZES[spatial_dims])
    with torch.no_grad():
        out = _outputs(net.eval()(x))[0]
    assert out.shape == x.shape, f"generator {name}: output {tuple(out.shape)} for input {tuple(x.shape)}"
    assert torch.isfinite(out).all(), f"generator {name}: non-finite output"
    outputs = _outputs(net.train()(x))
    sum(o.mean() for o in outputs).backward()  # every output head gets a gradient
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert grads, f"generator {name}: no trainable parameters"
    assert all(g is not None and torch.isfinite(g).all() for g in grads), \
        f"generator {name}: a parameter gets no (or a non-finite) gradient"


def _check_latent_generator(name: str, net: torch.nn.Module, spatial_dims: int) -> None:
    z = torch.randn(3, int(net.latent_dim))
    with torch.no_grad():
        out = net.eval()(z)
    wanted = (3, 1) + (int(net.image_size),) * spatial_dims
    assert tuple(out.shape) == wanted, f"generator {name}: output {tuple(out.shape)} for latent {tuple(z.shape)}"
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1, f"generator {name}: output outside 0..1"
    net.train()(z).mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), \
        f"generator {name}: a parameter gets no (or a non-finite) gradient"


def check_discriminator(name: str, spatial_dims: int, registry=None) -> None:
    """Logit maps ``(N, 1, ...)`` (or a tuple of them), finite, with a gradient for the input."""
    torch.manual_seed(0)
    net = build_example("discriminators", name, registry, spatial_dims=spatial_dims, in_channels=2).train()
    x = torch.rand(2, 2, *[32] * spatial_dims, requires_grad=True)
    maps = _outputs(net(x))
    for logits in maps:
        assert logits.shape[0] == 2 and logits.shape[1] == 1, \
            f"discriminator {name}: logits of shape {tuple(logits.shape)}, expected (N, 1, ...)"
        assert torch.isfinite(logits).all(), f"discriminator {name}: non-finite logits"
    sum(m.mean() for m in maps).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0, f"discriminator {name}: no gradient for the input"


def is_adversarial(loss) -> bool:
    """An adversarial criterion takes ``(logits, target_is_real, for_discriminator)``."""
    forward = getattr(loss, "forward", loss)
    return "target_is_real" in inspect.signature(forward).parameters


def check_loss(name: str, registry=None) -> None:
    """A finite scalar with a finite, non-zero gradient for the prediction, in 2D and 3D."""
    registry = _registry(registry)
    component = registry.components("losses")[name]
    for dims in (2, 3):
        options = {"spatial_dims": dims} if "spatial_dims" in component.options() else {}
        loss = registry.build("losses", {"type": name, **component.example, **options})
        prediction = torch.rand(2, 1, *[16] * dims, requires_grad=True)
        if is_adversarial(loss):
            value = sum(loss(prediction, real, for_discriminator=d) for real in (True, False) for d in (True, False))
        else:
            value = loss(prediction, torch.rand(2, 1, *[16] * dims))
        assert value.ndim == 0 and torch.isfinite(value), f"loss {name}: not a finite scalar in {dims}D"
        value.backward()
        assert prediction.grad is not None and torch.isfinite(prediction.grad).all() \
            and prediction.grad.abs().sum() > 0, f"loss {name}: no usable gradient in {dims}D"


def check_noise_model(name: str, registry=None) -> None:
    """Same shape, finite, changes the image, and the seed alone decides the noise."""
    noise = build_example("noise_models", name, registry)
    clean = torch.rand(1, 24, 24)
    a = noise(clean, torch.Generator().manual_seed(5))
    b = noise(clean, torch.Generator().manual_seed(5))
    c = noise(clean, torch.Generator().manual_seed(6))
    assert a.shape == clean.shape and torch.isfinite(a).all(), f"noise model {name}: shape or values wrong"
    if getattr(noise, "identity", False):  # declares that it adds nothing (already-noisy data)
        assert torch.equal(a, clean) and torch.equal(c, clean), f"noise model {name}: changed the image"
        return
    assert torch.equal(a, b), f"noise model {name}: the same seed gave different noise"
    assert not torch.equal(a, c) and not torch.equal(a, clean), f"noise model {name}: the noise does not vary"


def check_optimizer(name: str, registry=None) -> None:
    """One step lowers a convex loss."""
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = _registry(registry).build("optimizers", {"type": name}, params=[weight])
    (weight**2).sum().backward()
    optimizer.step()
    assert (weight < 1).all(), f"optimizer {name}: a step did not descend"


def check_reader(name: str, registry=None) -> None:
    from monai.data import ImageReader

    reader = _registry(registry).build("readers", {"type": name})
    assert isinstance(reader, ImageReader), f"reader {name}: not a monai.data.ImageReader"


def check_format(name: str, sample: Path, out_dir: Path, registry=None) -> None:
    """``sample`` (a file or folder in this format) reads as a finite ``Volume``; a changed
    copy written with the format reads back with the new values (to the stored precision),
    the same shape and the same format, and writing refuses to replace it unasked."""
    from toolbox.data.volumes import find_format, formats_of, read_volume, write_volume
    from toolbox.errors import ToolboxError

    formats = formats_of(_registry(registry))
    assert find_format(Path(sample), formats).name == name, f"format {name}: {sample} is not chosen as {name}"
    volume = read_volume(sample, formats)
    assert volume.format == name and np.isfinite(volume.array).all()
    low, high = volume.value_range
    span = float(volume.array.max() - volume.array.min()) or 1.0
    changed = np.clip(volume.array[:, ::-1].copy() + 0.25 * span, low, high).astype(np.float32)  # flipped: not a copy
    output = Path(out_dir) / f"roundtrip_{Path(sample).name}"
    write_volume(volume, changed, output, "contract check", formats)
    again = read_volume(output, formats)
    assert again.format == name and again.array.shape == volume.array.shape, \
        f"format {name}: wrote {volume.array.shape}, read back {again.array.shape}"
    if np.issubdtype(volume.stored_dtype, np.integer):  # one stored step, in physical units
        info = np.iinfo(volume.stored_dtype)
        step = (high - low) / (float(info.max) - float(info.min)) if np.isfinite(high - low) else 1.0
    else:
        step = 1e-5 * span
    error = float(np.abs(again.array - changed).max())
    assert error <= 0.51 * step + 1e-6 * span, f"format {name}: values changed by {error} on the way back"
    try:
        write_volume(volume, changed, output, "contract check", formats)
    except ToolboxError:
        pass
    else:
        raise AssertionError(f"format {name}: replaced an existing output without overwrite")


def tiny_recipe(scheme: str, spatial_dims: int = 2, registry=None, **sections) -> dict:
    """A recipe (as a checked mapping) with tiny parts for one step of ``scheme``; any
    section can be replaced (``losses={...}``)."""
    from toolbox.gan import GANScheme

    component = _registry(registry).components("schemes")[scheme]
    parts = copy.deepcopy(_TINY_PARTS)
    if not (inspect.isclass(component.factory) and issubclass(component.factory, GANScheme)):
        # A non-adversarial scheme gets fidelity losses only, and no discriminator.
        del parts["discriminator"], parts["losses"]["adv"], parts["optimizers"]["discriminator"]
    # A scheme that needs particular parts (a latent generator, ...) names them.
    parts.update(copy.deepcopy(getattr(component.factory, "example_parts", {})))
    recipe = {
        "seed": 0,
        "data": {"spatial_dims": spatial_dims, "channels": 1, "patch_size": [16] * spatial_dims,
                 "context_slices": 1},
        **parts,
        "scheme": {"type": scheme, **component.example},
    }
    recipe.update(sections)
    return recipe


def check_scheme(name: str, spatial_dims: int = 2, registry=None, steps: int = 3, **sections) -> None:
    """``steps`` training steps of scheme ``name`` on tiny parts: detached finite scalar
    tensors back, the generator's weights change, and its state restores exactly."""
    from toolbox.parts import Parts

    registry = _registry(registry)
    torch.manual_seed(0)
    recipe = tiny_recipe(name, spatial_dims, registry, **sections)
    parts = Parts(recipe, "contract check", torch.device("cpu"), registry)
    scheme = registry.build("schemes", recipe["scheme"], "contract check", "scheme", parts=parts)
    assert scheme.generator is not None, f"scheme {name}: did not set self.generator"
    before = {k: v.clone() for k, v in scheme.state_dict()["modules"][scheme.generator_name()].items()}
    state = copy.deepcopy(scheme.state_dict())  # state_dict shares the live tensors
    generator = torch.Generator().manual_seed(1)
    per_step = int(getattr(scheme, "batches_per_step", 1))
    scheme.train(True)
    last = {}
    for step in range(1, steps + 1):
        batches = []
        for _ in range(per_step):
            target = torch.rand(2, 1, *[16] * spatial_dims, generator=generator)
            batches.append({"input": target + 0.1 * torch.randn(target.shape, generator=generator), "target": target})
        terms = scheme.train_step(batches, step)
        assert isinstance(terms, dict) and terms, f"scheme {name}: train_step returned {type(terms).__name__}"
        for key, value in terms.items():
            assert isinstance(value, torch.Tensor) and value.ndim == 0 and not value.requires_grad, \
                f"scheme {name}: term {key} is not a detached scalar tensor"
            assert torch.isfinite(value), f"scheme {name}: term {key} = {value} at step {step}"
        last = terms
    after = scheme.state_dict()["modules"][scheme.generator_name()]
    assert any(not torch.equal(before[k], after[k]) for k in before), \
        f"scheme {name}: {steps} steps ({', '.join(last)}) did not change the generator"
    scheme.load_state_dict(state)
    restored = scheme.state_dict()["modules"][scheme.generator_name()]
    assert all(torch.equal(before[k], restored[k]) for k in before), f"scheme {name}: load_state_dict did not restore"


CARD_SECTIONS = ("training data", "noise", "intended use", "limits")


def check_model(name: str, registry=None) -> None:
    """Pretrained model ``name``: its file is a safe checkpoint (read ``weights_only``) whose
    generator builds from its recipe and takes its weights; it denoises an image of its
    dimensions (a 3D volume for 2D models, slice by slice) into a finite one of the same
    shape; its model card beside it covers training data, noise, intended use and limits."""
    from toolbox.infer import denoise_with_model, load_trained_model
    from toolbox.pretrained import card_file, model_file

    registry = _registry(registry)
    path = model_file(registry, name)
    model = load_trained_model(path, torch.device("cpu"), registry)
    card = card_file(path)
    assert card.is_file(), f"pretrained model {name}: no model card {card.name} beside {path.name}"
    title = next((line for line in card.read_text(encoding="utf-8").splitlines() if line.strip()), "")
    assert title.startswith(f"# {name}:"), f"pretrained model {name}: its card should open with '# {name}: what it is'"
    text = card.read_text(encoding="utf-8").lower()
    missing = [s for s in CARD_SECTIONS if s not in text]
    assert not missing, f"pretrained model {name}: its card says nothing about {', '.join(missing)}"
    rng = np.random.default_rng(0)
    size = SIZES[3] if model.spatial_dims == 3 else (3, *SIZES[2])
    units = (rng.random((model.channels, *size)) * 100).astype(np.float32)
    out = denoise_with_model(model, units, 0 if model.spatial_dims == 2 else None, torch.device("cpu"))
    assert out.shape == units.shape and np.isfinite(out).all(), f"pretrained model {name}: bad output"


def check_exporter(name: str, registry=None, generator: str = "unet") -> None:
    """Export format ``name``: a small untrained ``generator`` (its registered example
    options), in 2D, exported through ``toolbox export``'s own path, loads back with the
    format's runtime and reproduces the toolbox's output at a size it was not traced at (the
    command's check), and the file and its ``.json`` description are there afterwards."""
    import tempfile

    from toolbox.checkpoint import FORMAT, save_checkpoint
    from toolbox.export_model import export_model
    from toolbox.parts import build_generator

    registry = _registry(registry)
    exporter = registry.get("exporters", name, "format", "format").factory()
    options = dict(registry.components("generators")[generator].example)
    recipe = {"name": "contract", "generator": {"type": generator, **options},
              "data": {"spatial_dims": 2, "channels": 1, "patch_size": [32, 32], "noise_level_map": False,
                       "normalize": {"type": "window", "low": 0, "high": 1}}}
    torch.manual_seed(0)
    network = build_generator(registry, recipe, "contract")
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "model.pt"
        save_checkpoint(checkpoint, {"format": FORMAT, "recipe": recipe, "step": 0, "generator_module": "generator",
                                     "scheme": {"modules": {"generator": network.state_dict()}}})
        output = Path(folder) / f"exported{exporter.suffix or '.out'}"
        info = export_model(registry, checkpoint, name, output)
        assert info.verification.get("passed"), f"exporter {name}: the check did not pass ({info.verification})"
        assert output.exists() and Path(str(output) + ".json").is_file(), f"exporter {name}: nothing written"
