"""The ``toolbox`` command line: thin, heavy imports inside the commands.

A user error (``ToolboxError``) prints one line ``Error: ...`` and exits with status 2;
set ``TOOLBOX_DEBUG=1`` to see the traceback as well.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from toolbox.errors import ToolboxError

from toolbox.registry import KINDS  # noqa: E402 - light: no torch, no plugins

KIND_NAMES = tuple(KINDS)


def _yaml_mapping(text: str | None, flag: str, example: str):
    from toolbox.recipe import parse_yaml

    value = parse_yaml(text, flag) if text is not None else None
    if value is not None and not isinstance(value, dict):
        raise ToolboxError(f"{flag} must be a YAML mapping like '{example}'")
    return value


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _registry():
    """The process-wide registry (built-in and installed plugins): the CLI builds it once and
    hands it to what needs it."""
    from toolbox.plugins import get_registry

    return get_registry()


def _warn_failed_plugins() -> None:
    from toolbox.plugins import get_state

    for name, info in get_state().infos.items():
        if info.error:
            _stderr(f"Warning: plugin '{name}' not loaded: {info.error}")


def cmd_run(args) -> int:
    from toolbox.launch import relaunch_with_torchrun

    from pathlib import Path

    from toolbox.distributed import shutdown
    from toolbox.recipe import load_recipe
    from toolbox.train import run_training

    _warn_failed_plugins()
    if args.resume:
        resume = Path(args.resume)
        if args.recipe is not None and "=" in args.recipe:  # `run --resume DIR key=value`
            args.overrides = [args.recipe, *args.overrides]
        if not (resume / "recipe.yaml").is_file():
            raise ToolboxError(f"{resume}: not a run folder (no recipe.yaml)")
        recipe = load_recipe(resume / "recipe.yaml", args.overrides, registry=_registry())
    else:
        if args.recipe is None:
            raise ToolboxError("give a recipe, or --resume RUN_DIR")
        recipe = load_recipe(args.recipe, args.overrides, registry=_registry(), profile=args.profile)
    if args.nproc > 1:
        return relaunch_with_torchrun(args.nproc, args.argv)
    completed = False
    try:
        run_dir, report = run_training(recipe, _registry(), args.out, resume=Path(args.resume) if args.resume else None)
        completed = True
    finally:
        shutdown(completed)
    if report is not None:  # rank 0 (or the only process)
        print(f"Run folder: {run_dir}  (mean PSNR {report['mean']['psnr_noisy']:.2f} -> "
              f"{report['mean']['psnr']:.2f} dB on held-out images)")
    return 0


def cmd_denoise(args) -> int:
    from toolbox.launch import relaunch_with_torchrun

    from pathlib import Path

    from toolbox.denoise import denoise_inputs

    _warn_failed_plugins()
    if args.nproc > 1:
        return relaunch_with_torchrun(args.nproc, args.argv)
    from toolbox.distributed import shutdown

    model, inputs = _model_and_rest(args.model, args.inputs, args.model_name, "INPUT")
    completed = False
    try:
        denoise_inputs(model, [Path(p) for p in inputs], Path(args.output), _registry(),
                       overwrite=args.overwrite, series=args.series, device_name=args.device,
                       overlap=args.overlap, sigma=args.sigma, ensemble=args.ensemble,
                       inversion=_yaml_mapping(args.inversion, "--inversion", INVERSION_EXAMPLE),
                       window=args.window, amp=args.amp, adapt=args.adapt)
        completed = True
    finally:
        shutdown(completed)
    return 0


def _model_and_rest(first: str, rest: list[str], name: str | None, what: str):
    """(model path, the other positional arguments): ``--model NAME`` takes the place of
    the first positional argument, a run folder or checkpoint."""
    from pathlib import Path

    if name is not None:
        from toolbox.pretrained import model_file

        return model_file(_registry(), name), [first, *rest]
    if not rest:
        raise ToolboxError(f"give MODEL (a run folder or checkpoint) and {what}, or --model NAME and {what}")
    return Path(first), rest


def cmd_evaluate(args) -> int:
    from pathlib import Path

    from toolbox.evaluation import evaluate

    _warn_failed_plugins()
    args.model, args.data = _model_and_rest(args.model, args.data, args.model_name, "DATA")
    noise = _yaml_mapping(args.noise, "--noise", "{type: gaussian, sigma: 0.1}")
    inversion = _yaml_mapping(args.inversion, "--inversion", INVERSION_EXAMPLE)
    if args.sweep:
        from toolbox.sweep import sweep

        if args.noisy:
            raise ToolboxError("--sweep draws synthetic noise at each level; it does not take --noisy")
        sweep(Path(args.model), args.data, _registry(), args.sweep, noise_spec=noise, out_dir=args.output,
              device_name=args.device, seed=args.seed, ensemble=args.ensemble, true_sigma=args.true_sigma,
              inversion=inversion, window=args.window, amp=args.amp, adapt=args.adapt)
        return 0
    evaluate(Path(args.model), args.data, _registry(), noisy_paths=args.noisy, noise_spec=noise,
             out_dir=args.output, device_name=args.device, seed=args.seed, ensemble=args.ensemble,
             true_sigma=args.true_sigma, inversion=inversion, window=args.window, amp=args.amp,
             adapt=args.adapt)
    return 0


def cmd_models(args) -> int:
    from toolbox.pretrained import describe

    rows = describe(_registry())
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    from rich.table import Table

    from toolbox.console import make_console

    table = Table(title="Pretrained models (toolbox denoise --model NAME INPUT -o OUTPUT)")
    for column in ("name", "dims", "MB", "what", "plugin", "model card"):
        table.add_column(column, overflow="fold")
    for row in rows:
        if "error" in row:
            table.add_row(row["name"], "", "", f"[red]{row['error']}", row["plugin"], "")
            continue
        table.add_row(row["name"], row["dims"], f"{row['megabytes']:.1f}", row["summary"], row["plugin"],
                      row["card"] or "(none)")
    make_console().print(table)
    return 0


def cmd_models_pack(args) -> int:
    from pathlib import Path

    from toolbox.pretrained import pack

    written = pack(Path(args.run), Path(args.output), half=not args.fp32, overwrite=args.overwrite)
    print(f"wrote {written} ({written.stat().st_size / 2**20:.2f} MB); write its model card beside it "
          f"as {written.with_suffix('.md').name}")
    return 0


def cmd_export(args) -> int:
    from pathlib import Path

    from toolbox.export_model import export_model

    if (args.model is None) == (args.model_name is None):
        raise ToolboxError("give MODEL (a run folder or checkpoint) or --model NAME, not both")
    registry = _registry()
    if args.model_name is not None:
        from toolbox.pretrained import model_file

        model = model_file(registry, args.model_name)
    else:
        model = Path(args.model)
    info = export_model(registry, model, args.format, Path(args.output), overwrite=args.overwrite,
                        test_image_path=Path(args.test_image) if args.test_image else None)
    check = info.verification
    print(f"wrote {info.files[0]} ({info.format}) and {info.files[1]}")
    print(f"checked with {check['runtime']} on a {check['test_input']} test input: max |difference| "
          f"{check['max_abs_error']:.2g} against the toolbox's output (tolerance {check['tolerance']:.2g})")
    return 0


def cmd_interpolate(args) -> int:
    from pathlib import Path

    from toolbox.interpolate import interpolate

    written = interpolate(args.first, args.second, args.alpha, Path(args.output), _registry(), args.overwrite)
    print(f"wrote {written} ((1 - {args.alpha:g}) x {args.first} + {args.alpha:g} x {args.second})")
    return 0


def cmd_list(args) -> int:
    from toolbox.registry import INJECTED

    registry = _registry()
    kinds = [args.kind] if args.kind else list(KIND_NAMES)
    for kind in kinds:
        if kind not in KIND_NAMES:
            from toolbox.registry import did_you_mean

            raise ToolboxError(
                f"Unknown kind '{kind}'.{did_you_mean(kind, KIND_NAMES)} Kinds: {', '.join(KIND_NAMES)}"
            )
    listing = {kind: registry.components(kind) for kind in kinds}
    if args.json:
        print(json.dumps({
            kind: {
                name: {"plugin": c.plugin, "aliases": list(c.aliases), "summary": c.summary,
                       "options": {k: (None if v is ... else repr(v)) for k, v in c.options().items()
                                   if k not in INJECTED.get(kind, ())}}
                for name, c in table.items()
            } for kind, table in listing.items()
        }, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for kind, table in listing.items():
        view = Table(title=kind, title_justify="left")
        view.add_column("name")
        view.add_column("plugin")
        view.add_column("aliases")
        view.add_column("what it is")
        for name, c in table.items():
            view.add_row(name, c.plugin, ", ".join(c.aliases), c.summary)
        console.print(view)
    _warn_failed_plugins()
    return 0


def cmd_plugins(args) -> int:
    from toolbox.plugins import get_state

    infos = get_state().infos
    if args.json:
        print(json.dumps([
            {"name": i.name, "version": i.version, "source": i.source, "hooks": i.hooks, "error": i.error}
            for i in infos.values()
        ], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    view = Table(title="plugins", title_justify="left")
    for column in ("name", "version", "source", "hooks", "status"):
        view.add_column(column)
    for i in infos.values():
        view.add_row(i.name, i.version, i.source, ", ".join(i.hooks),
                     f"[red]not loaded: {i.error}" if i.error else "ok")
    Console().print(view)
    return 0


def cmd_recipe_check(args) -> int:
    import torch

    from toolbox.recipe import load_recipe
    from toolbox.train import build_scheme

    _warn_failed_plugins()
    registry = _registry()
    for path in args.recipes:
        recipe = load_recipe(path, args.overrides, registry=registry, profile=args.profile)
        # Build every part on the CPU (no data is read, nothing is trained).
        _, scheme = build_scheme(recipe, registry, torch.device("cpu"))
        data = recipe["data"]
        if data.get("noise"):
            registry.build("noise_models", data["noise"], recipe.source, "data.noise")
        if data.get("reader"):
            registry.build("readers", data["reader"], recipe.source, "data.reader")
        counts = ", ".join(f"{k} {sum(p.numel() for p in m.parameters()) / 1e6:.2f}M"
                           for k, m in scheme.modules().items())
        print(f"OK {path}: scheme {recipe['scheme']['type']}; {counts}")
    return 0


def cmd_noise_simulate(args) -> int:
    from pathlib import Path

    from toolbox.noise_tools import simulate

    _warn_failed_plugins()
    noise = _yaml_mapping(args.noise, "--noise", "{type: low_dose_ct, I0: 2e4}")
    normalize = _yaml_mapping(args.normalize, "--normalize", "{type: window, low: -1000, high: 1000}")
    simulate([Path(p) for p in args.inputs], Path(args.output), noise, _registry(), normalize=normalize,
             copies=args.copies, seed=args.seed, overwrite=args.overwrite)
    return 0


def cmd_noise_estimate(args) -> int:
    from pathlib import Path

    from toolbox.noise_tools import estimate

    normalize = _yaml_mapping(args.normalize, "--normalize", "{type: scale, high: 99.5}")
    estimate([Path(p) for p in args.inputs], _registry(), model=args.model, normalize=normalize, offset=args.offset)
    return 0


def cmd_plugin_new(args) -> int:
    from pathlib import Path

    from toolbox.scaffold import new_plugin

    root = new_plugin(args.name, Path(args.directory))
    print(f"wrote {root}: pip install -e {root} && python -m pytest {root}")
    return 0


def _add_run(sub) -> None:
    run = sub.add_parser("run", help="train (and evaluate) what a recipe describes")
    run.add_argument("recipe", nargs="?", help="a YAML recipe, e.g. recipes/adl3d.yaml")
    run.add_argument("overrides", nargs="*", metavar="KEY.PATH=VALUE",
                     help="override recipe values, e.g. train.steps=10")
    run.add_argument("--out", help="run folder (default runs/NAME-TIMESTAMP)")
    run.add_argument("--profile", help="apply the recipe's profiles.NAME overrides (e.g. paper)")
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="continue a stopped run from its last checkpoint (same recipe)")
    run.add_argument("--nproc", type=int, default=1, metavar="N",
                     help="train with N processes (DDP; same as torchrun --nproc_per_node N -m toolbox run ...)")
    run.set_defaults(func=cmd_run)


INVERSION_EXAMPLE = "{starts: 16, max_steps: 1000, loss: poisson, counts_per_unit: 1}"


def _add_inversion(parser) -> None:
    parser.add_argument("--inversion", metavar="SETTINGS",
                        help="a model that denoises by latent search (unconditional_gan): settings that replace "
                             f"the recipe's inversion section, e.g. '{INVERSION_EXAMPLE}'")


def _add_speed_options(parser) -> None:
    from toolbox.inference_window import WINDOW_CHOICES

    parser.add_argument("--window", metavar="SIZE", help=f"sliding windows: {WINDOW_CHOICES}; larger windows "
                        "are faster, and for some models less exact (BENCHMARKS.md)")
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision (bfloat16 on the CPU, float16 on CUDA): several times faster on "
                             "CPUs with AMX/AVX512-BF16 and on GPUs, at a small cost in PSNR (BENCHMARKS.md)")


def _add_denoise(sub) -> None:
    denoise = sub.add_parser("denoise", help="denoise NIfTI / DICOM series / TIFF / PNG with a trained model")
    denoise.add_argument("model", help="a run folder (uses its best checkpoint) or a checkpoint file")
    denoise.add_argument("--model", dest="model_name", metavar="NAME",
                         help="a pretrained model by name (toolbox models), instead of MODEL")
    denoise.add_argument("inputs", nargs="*", metavar="INPUT",
                         help="files, DICOM series folders, or folders of them")
    denoise.add_argument("-o", "--output", required=True,
                         help="output file (one input) or folder (several inputs, or a DICOM series)")
    denoise.add_argument("--overwrite", action="store_true", help="replace an existing output")
    denoise.add_argument("--series", help="SeriesInstanceUID to pick in a folder with several series")
    denoise.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    denoise.add_argument("--overlap", type=float, help="sliding-window overlap (default: the recipe's)")
    denoise.add_argument("--sigma", type=float, help="noise SD in the image's units (e.g. HU) for a "
                         "noise-conditional model (default: estimated from each image)")
    denoise.add_argument("--ensemble", type=int, default=1, metavar="N",
                         help="average over N flips/rotations (2D: up to 8, 3D: up to 48); N times slower")
    denoise.add_argument("--nproc", type=int, default=1, metavar="N",
                         help="N processes, each denoising every N-th input (same as torchrun "
                              "--nproc_per_node N -m toolbox denoise ...)")
    denoise.add_argument("--adapt", type=int, default=0, metavar="STEPS",
                         help="first tune the model to each image for STEPS steps (channel gains, SURE; "
                              "white Gaussian or Rician noise): slower, better on images unlike its "
                              "training data (e.g. 300 for a 2D model, 100 for 3D)")
    _add_inversion(denoise)
    _add_speed_options(denoise)
    denoise.set_defaults(func=cmd_denoise)


def _add_evaluate(sub) -> None:
    evaluate = sub.add_parser("evaluate", help="PSNR/SSIM of a model vs classical baselines, with figures")
    evaluate.add_argument("model", help="a run folder or a checkpoint file")
    evaluate.add_argument("--model", dest="model_name", metavar="NAME",
                          help="a pretrained model by name (toolbox models), instead of MODEL")
    evaluate.add_argument("data", nargs="*", help="clean images: files, DICOM series folders, folders")
    evaluate.add_argument("--noisy", nargs="+", help="noisy counterparts (matched by file name)")
    evaluate.add_argument("--noise", help="synthetic noise instead, e.g. '{type: gaussian, sigma: 0.1}' "
                          "(default: the model's recipe)")
    evaluate.add_argument("--sweep", metavar="data.noise.KEY=[V1,V2,...]",
                          help="every level of one noise option: one table, a CSV and a plot "
                               "(e.g. 'data.noise.sigma=[0.01,0.05,0.1]')")
    evaluate.add_argument("-o", "--output", help="report folder (default: RUN/evaluate-TIMESTAMP)")
    evaluate.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    evaluate.add_argument("--seed", type=int, default=12345, help="seed of the synthetic noise")
    evaluate.add_argument("--ensemble", type=int, default=1, metavar="N",
                          help="also score the model with an N-fold self-ensemble (flips/rotations)")
    evaluate.add_argument("--true-sigma", action="store_true",
                          help="also score a noise-conditional model given the true noise SD (default: estimated)")
    evaluate.add_argument("--adapt", type=int, default=0, metavar="STEPS",
                          help="also score the model tuned to each image for STEPS steps (toolbox denoise --adapt)")
    _add_inversion(evaluate)
    _add_speed_options(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)


def _add_tools(sub) -> None:
    models = sub.add_parser("models", help="pretrained models (list; pack a run into one)")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=cmd_models)
    models_sub = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    pack = models_sub.add_parser("pack", help="a run's best generator as a small (fp16) checkpoint")
    pack.add_argument("run", help="a run folder or checkpoint")
    pack.add_argument("-o", "--output", required=True, help="the .pt file to write (its card: same name, .md)")
    pack.add_argument("--fp32", action="store_true", help="keep full precision")
    pack.add_argument("--overwrite", action="store_true")
    pack.set_defaults(func=cmd_models_pack)

    export = sub.add_parser("export", help="write a model as ONNX / TorchScript / ..., checked by loading it back")
    export.add_argument("model", nargs="?", help="a run folder or checkpoint (or --model NAME)")
    export.add_argument("--model", dest="model_name", metavar="NAME", help="a pretrained model by name")
    export.add_argument("--format", required=True, help="an export format: toolbox list exporters")
    export.add_argument("-o", "--output", required=True, help="the file to write (its description: OUTPUT.json)")
    export.add_argument("--test-image", help="a real image to check the export on (default: a made one)")
    export.add_argument("--overwrite", action="store_true")
    export.set_defaults(func=cmd_export)

    mix = sub.add_parser("interpolate", help="blend two models' weights (ESRGAN's network interpolation)")
    mix.add_argument("first", help="a pretrained model's name, run folder or checkpoint (e.g. the fidelity model)")
    mix.add_argument("second", help="the same generator fine-tuned (e.g. adversarially)")
    mix.add_argument("--alpha", type=float, required=True, help="0 = first, 1 = second")
    mix.add_argument("-o", "--output", required=True, help="the checkpoint file to write")
    mix.add_argument("--overwrite", action="store_true")
    mix.set_defaults(func=cmd_interpolate)

    lister = sub.add_parser("list", help="registered components of one kind or all kinds")
    lister.add_argument("kind", nargs="?", help=", ".join(KIND_NAMES))
    lister.add_argument("--json", action="store_true")
    lister.set_defaults(func=cmd_list)

    plugins = sub.add_parser("plugins", help="installed plugins, their hooks and versions")
    plugins.add_argument("--json", action="store_true")
    plugins.set_defaults(func=cmd_plugins)

    plugin = sub.add_parser("plugin", help="plugin author tools")
    plugin_sub = plugin.add_subparsers(dest="plugin_command", metavar="SUBCOMMAND")
    new = plugin_sub.add_parser("new", help="write an installable plugin package that passes its own tests")
    new.add_argument("name", help="plugin name (lower case, digits, _): parts are NAME_cnn, NAME_tv")
    new.add_argument("--directory", default=".", help="where to create the package folder")
    new.set_defaults(func=cmd_plugin_new)
    plugin.set_defaults(func=lambda args: (plugin.print_help(), 2)[1])

    recipe = sub.add_parser("recipe", help="recipe tools")
    recipe_sub = recipe.add_subparsers(dest="recipe_command", metavar="SUBCOMMAND")
    check = recipe_sub.add_parser("check", help="validate recipes and build every part, no training")
    check.add_argument("recipes", nargs="+")
    check.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY.PATH=VALUE")
    check.add_argument("--profile", help="check with the recipe's profiles.NAME applied")
    check.set_defaults(func=cmd_recipe_check)
    recipe.set_defaults(func=lambda args: (recipe.print_help(), 2)[1])


def _add_noise(sub) -> None:
    noise = sub.add_parser("noise", help="simulate noisy / clean pairs, or estimate an image's noise")
    noise_sub = noise.add_subparsers(dest="noise_command", metavar="SUBCOMMAND")
    simulate = noise_sub.add_parser("simulate", help="noisy copies of clean images, written as pairs")
    simulate.add_argument("inputs", nargs="+", metavar="INPUT", help="clean files, DICOM series folders, folders")
    simulate.add_argument("-o", "--output", required=True, help="folder for noisy/ and clean/")
    simulate.add_argument("--noise", required=True, help="a noise model, e.g. '{type: low_dose_ct, I0: 2e4}'")
    simulate.add_argument("--normalize", help="the units a non-physical model's level is in "
                          "(default {type: percentile}); e.g. '{type: window, low: -1000, high: 1000}'")
    simulate.add_argument("--copies", type=int, default=1, help="noisy copies per input")
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--overwrite", action="store_true")
    simulate.set_defaults(func=cmd_noise_simulate)
    estimate = noise_sub.add_parser("estimate", help="estimate the noise of images; print a recipe snippet")
    estimate.add_argument("inputs", nargs="+", metavar="IMAGE")
    estimate.add_argument("--model", default="all", help="gaussian, poisson_gaussian, rician or all")
    estimate.add_argument("--normalize", help="the recipe's data.normalize, for the snippet's units "
                          "(default {type: percentile})")
    estimate.add_argument("--offset", type=float, help="the camera's dark level, if known (gives the read noise)")
    estimate.set_defaults(func=cmd_noise_estimate)
    noise.set_defaults(func=lambda args: (noise.print_help(), 2)[1])


def build_parser() -> argparse.ArgumentParser:
    from toolbox.meta import __version__

    parser = argparse.ArgumentParser(
        prog="toolbox", description="Adversarial denoising of medical and scientific images."
    )
    parser.add_argument("--version", action="version", version=f"toolbox {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_run, _add_denoise, _add_evaluate, _add_noise, _add_tools):
        add(sub)
    return parser, sub


def _add_plugin_commands(sub) -> None:
    from toolbox.plugins import get_state

    get_state().manager.hook.register_commands(cli=sub)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = os.environ.get("TOOLBOX_DEBUG") not in (None, "", "0")
    try:
        parser, sub = build_parser()
        # Plugin commands are added only when the command is not a built-in one, so that
        # `toolbox --help` and the built-ins stay fast and survive a broken plugin.
        builtin = {"run", "denoise", "evaluate", "noise", "interpolate", "models", "list", "plugins", "plugin",
                   "recipe", "export"}
        first = next((a for a in argv if not a.startswith("-")), None)
        if first is not None and first not in builtin:
            _add_plugin_commands(sub)
        # Overrides may come before or after options (`run R --out X a.b=1`): argparse leaves
        # the ones after an option unparsed, so collect them here.
        args, extra = parser.parse_known_args(argv)
        if extra:
            if hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
                args.overrides = list(args.overrides) + extra
            else:
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.argv = argv
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except ToolboxError as error:
        if debug:
            raise
        from toolbox.distributed import FailedOnMainRank

        if not isinstance(error, FailedOnMainRank):  # rank 0 says it once
            _stderr(f"Error: {error}")
        return 2
    except KeyboardInterrupt:
        _stderr("Interrupted.")
        return 130


if __name__ == "__main__":
    sys.exit(main())
