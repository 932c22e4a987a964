"""``toolbox denoise``: apply a trained model to files, DICOM series or folders of them."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from toolbox.distributed import barrier, init_distributed, rank_slice
from toolbox.errors import ToolboxError


def denoise_inputs(model_path: Path, inputs: list[Path], output: Path, registry, overwrite: bool = False,
                   series: str | None = None, device_name: str = "auto",
                   overlap: float | None = None, console=None, sigma: float | None = None,
                   ensemble: int = 1, inversion: dict | None = None, window: str | None = None,
                   amp: bool = False, adapt: int = 0) -> list[Path]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from toolbox.data.volumes import check_output, expand_inputs, formats_of, read_volume, write_volume
    from toolbox.infer import check_input, check_options, denoise_volume, estimated_sigma, load_trained_model
    from toolbox.console import make_console

    console = console or make_console()
    ranks, device = init_distributed(device_name)
    formats = formats_of(registry)
    items = expand_inputs(inputs, formats)
    batch = len(items) > 1 or (len(inputs) == 1 and Path(inputs[0]).is_dir() and items != [Path(inputs[0])])
    if batch and output.exists() and not output.is_dir():
        raise ToolboxError(f"{output}: several inputs need an output folder, and this is a file")
    targets = [output / item.name if batch else output for item in items]
    # Check every destination before reading or writing anything.
    for item, target in zip(items, targets):
        check_output(list(items), target, overwrite)
    if len(set(targets)) != len(targets):
        raise ToolboxError("two inputs have the same name; they would write the same output")
    # Under torchrun every rank checked every destination (the same answer everywhere)
    # before any rank writes; now each takes every world_size-th input.
    barrier()
    mine = rank_slice(list(zip(items, targets)), ranks)
    model = check_options(load_trained_model(model_path, device, registry, inversion), sigma, ensemble,
                          window=window, amp=amp, adapt=adapt)
    overlap = float(model.recipe["train"].get("val_overlap", 0.25)) if overlap is None else overlap
    description = f"denoised {model.name}"
    written, seconds = [], []
    # The progress display starts only once an input has been read and found to fit the
    # model, so a refused input gives its one-line error and no empty bar.
    progress = Progress(TextColumn("[bold blue]{task.description}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                        console=console)
    try:
        for item, target in mine:
            volume = read_volume(item, formats, series=series, channels=model.channels)
            try:
                check_input(model, volume.array.shape)
            except ToolboxError as error:
                raise ToolboxError(f"{item}: {error}") from error
            told = model
            if model.noise_level_map and sigma is None:  # estimated once, shown, then used
                level = estimated_sigma(volume.image_values(), model.recipe["data"].get("noise"))
                console.print(f"{item.name}: noise SD estimated at {level:.4g} in the image's units "
                              "(give --sigma to set it)")
                told = dataclasses.replace(model, sigma=level)
            progress.start()
            task = progress.add_task(item.name[:40], total=None)

            def report(done, total, task=task):
                progress.update(task, completed=done, total=total)

            started = time.perf_counter()
            units = denoise_volume(told, volume, device, overlap, report,
                                   on_adapted=lambda done, item=item: console.print(f"{item.name}: {done.describe()}"))
            seconds.append(time.perf_counter() - started)
            written.append(write_volume(volume, units, target, description, formats, overwrite))
    finally:
        progress.stop()
    for path, took in zip(written, seconds):
        console.print(f"wrote {path} ({took:.1f} s)")
    return written
