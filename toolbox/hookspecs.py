"""The whole plugin API of toolbox: one hook a kind of part, each with its factory contract.

A plugin is a module (or object) with functions marked ``@toolbox.hookimpl`` whose names
are the hooks below.  Built-in plugins (``toolbox_plugins.*``) are written exactly like
third-party ones; a third-party package is found through the entry-point group
``denoise_toolbox``.

Every registration hook receives ``register(name, factory, aliases=(), example=None)`` and
may call it as often as it likes:

- ``name``: the recipe's ``type:`` value; lower case, unique across all plugins (a
  duplicate is an error that names both plugins).
- ``factory``: a callable returning the part.  Its keyword arguments are the recipe
  options; they are checked against its signature before anything is built.
- ``aliases``: other names accepted for the same factory.
- ``example``: small keyword arguments that build a cheap instance, used by the contract
  tests (``tests/test_contract.py``) that run every registered part in 2D and 3D.

What the core injects, when the factory accepts a parameter of that name:
``spatial_dims`` (2 or 3), ``in_channels``, ``out_channels`` for networks; ``params`` for
optimizers.  The recipe key ``weight`` of a loss is the core's (the loss's weight in the
total) and never reaches the factory.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("toolbox")


@hookspec
def register_generators(register):
    """Register denoisers / generators.

    ``factory(spatial_dims, in_channels, out_channels, **options) -> torch.nn.Module``.
    ``forward(x)`` maps a batch ``(N, in_channels, *spatial)`` to ``(N, out_channels,
    *spatial)``; with ``data.scale`` > 1 (super-resolution) the core also injects ``scale``
    and the output is ``scale`` times larger along every spatial axis (a factory without a
    ``scale`` parameter cannot be used for super-resolution).  A network with several
    outputs (deep supervision) returns a tuple whose first item is the full-size image.
    The network should accept any spatial size (pad and crop back if it needs a multiple).
    """


@hookspec
def register_discriminators(register):
    """Register discriminators / critics.

    ``factory(spatial_dims, in_channels, **options) -> torch.nn.Module`` returning logits
    (no sigmoid): a score map ``(N, 1, *patch_grid)``, a score ``(N, 1)``, or a tuple of
    such maps (one per scale, e.g. ADL's discriminator); adversarial losses average over
    the tuple.  ``in_channels`` is chosen by the scheme (a conditional scheme passes input
    and output channels concatenated).
    """


@hookspec
def register_losses(register):
    """Register losses.

    ``factory(**options) -> torch.nn.Module``.  A pixel / content loss is called
    ``loss(prediction, target)``; an adversarial criterion is called
    ``loss(logits, target_is_real: bool, for_discriminator: bool)`` (MONAI's
    ``PatchAdversarialLoss`` convention).  Both return a scalar tensor.  A relativistic
    criterion (one that compares real and fake logits, as ESRGAN's) has a property
    ``relativistic`` that is true and a method ``relative(real_logits, fake_logits,
    for_discriminator) -> {"real": tensor, "fake": tensor}``; ``toolbox.GANScheme`` calls it
    instead, for the discriminator's and the generator's terms.

    Optional: a loss with a method ``check_patch(patch_size)`` (the generator's output
    patch as a tuple: ``data.patch_size`` times ``data.scale``) is asked when the recipe's
    parts are built, before any training, and raises ``ValueError`` with a one-line reason
    if it cannot take such patches (e.g. a perceptual network too deep for a thin 3D slab).
    """


@hookspec
def register_optimizers(register):
    """Register optimizers: ``factory(params, **options) -> torch.optim.Optimizer``."""


@hookspec
def register_noise_models(register):
    """Register noise models for synthetic noisy / clean pairs.

    ``factory(**options) -> callable(clean, generator) -> noisy`` where ``clean`` is a
    tensor ``(C, *spatial)`` in normalised units (the recipe's ``data.normalize``) and
    ``generator`` a ``torch.Generator`` that is the only source of randomness, so that a
    seed reproduces the noise exactly.  With ``data.scale`` > 1 the model makes the
    low-resolution input: it gets a clean patch ``scale`` times larger than
    ``data.patch_size`` and returns one of ``data.patch_size`` (``sr_degradation``).

    A model defined in the images' own units (a calibrated camera in ADU) sets
    ``units = "native"``: it gets ``clean`` in those units (training maps each patch back
    with its image's normaliser).  A model whose noise depends on the whole image and its physical units (low-dose CT:
    photon counts along every ray through the body) sets ``whole_image = True``; it is then
    called ``noise(image, generator, spacing=..., slice_axis=...)`` with the whole image in
    its own units (HU for CT), ``spacing`` in mm per spatial axis (None when the file has
    none) and the axis 3D volumes are sliced along.  Training draws ``data.noise_copies``
    noisy copies of each training image once, at the start, and trains on them as pairs.

    Optional: a photon-counting model has a method ``photons()`` returning ``(photons at
    normalised level 1, Gaussian read SD in normalised units)``, or None when they are not
    fixed; ``toolbox evaluate`` then adds BM3D / BM4D with the Anscombe transform.
    """


@hookspec
def register_readers(register):
    """Register MONAI image readers for training data named in a recipe
    (``data.reader: {type: NAME}``): ``factory(**options) -> monai.data.ImageReader``.
    Without ``data.reader``, every image is read through the registered formats."""


@hookspec
def register_formats(register):
    """Register image file formats: what ``toolbox denoise``, ``evaluate`` and training read
    and write.

    ``factory() -> toolbox.io.ImageFormat`` with ``suffixes`` (the name endings it claims),
    ``sniff(path) -> bool`` (the content is this format: picks among formats claiming the
    same suffix, and finds files with a wrong or no suffix), ``read(path, series=None,
    channels=None) -> toolbox.io.Volume`` (the image in its physical units, ``(C,
    *spatial)``, with what writing it back needs in ``meta``) and ``write(volume, units,
    output, description, overwrite)`` (atomically, e.g. with ``toolbox.io.write_file``).
    A format that reads folders as one image (a DICOM series) sets ``folders = True``.
    """


@hookspec
def register_schemes(register):
    """Register training schemes (how one generator step is made).

    ``factory(parts, **options) -> toolbox.Scheme`` (adversarial schemes subclass
    ``toolbox.GANScheme``).  ``parts`` (``toolbox.Parts``) builds the recipe's generator,
    discriminator, losses and optimizers on request and holds the device and
    mixed-precision settings.  The training loop calls ``scheme.train_step(batches, step)``
    (detached scalar tensors back) and knows nothing else about the method.
    """


@hookspec
def register_models(register):
    """Register pretrained models, usable by name: ``toolbox denoise --model NAME``.

    ``factory() -> pathlib.Path`` of a toolbox checkpoint file (``toolbox models pack RUN
    -o NAME.pt`` writes one: the recipe and the generator's weights, fp16), with its model
    card ``NAME.md`` beside it (architecture, training data and licences, noise model and
    range, training command and time, held-out results, intended use and limits).  A
    package ships both as package data and returns the path from
    ``importlib.resources``.  A model too large to ship is returned as
    ``toolbox.HostedModel(url, sha256, filename, card)``: fetched once into the cache
    (``$TOOLBOX_CACHE``, default ``~/.cache/toolbox``), checked against its SHA-256, and
    read from there; ``TOOLBOX_OFFLINE=1`` never downloads.  Checkpoints are read with
    ``weights_only=True``.
    """


@hookspec
def register_exporters(register):
    """Register export formats: ``toolbox export MODEL --format NAME -o OUT``.

    ``factory() -> toolbox.export.Exporter``: ``write(network, example, path, info)`` writes
    ``network`` (a ``toolbox.export.ExportableNetwork``: normalised image of any size in,
    normalised output out) at ``path``; ``load(path, info)`` loads it back with the runtime
    the format's users run and returns ``run(image, noise_sd) -> output`` on NumPy arrays.
    The core checks that output against the toolbox's own on a test image and reports
    success only when they agree (``toolbox.export.RELATIVE_TOLERANCE``).
    """


@hookspec
def register_commands(cli):
    """Add subcommands to the ``toolbox`` CLI.

    ``cli`` is the argparse sub-parsers object: ``parser = cli.add_parser("name",
    help=...)``, add arguments, then ``parser.set_defaults(func=callable(args) -> int)``.
    """
