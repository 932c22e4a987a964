"""``toolbox evaluate MODEL DATA --sweep 'data.noise.sigma=[0.01,0.05,0.1]'``: the model and
the classical baselines at every level of one noise option, as one table, a CSV and a plot.

Every level sees the same images and the same seeds; baselines that need the noise level
get the true one when the noise model states it (Gaussian ``sigma``) and an estimate from
the noisy image otherwise (the table says which).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np

from toolbox.errors import ToolboxError


def parse_sweep(text: str) -> tuple[list[str], list]:
    """``data.noise.KEY=[v1, v2, ...]`` (or ``noise.KEY=...``) -> (keys under the noise spec, values)."""
    from toolbox.recipe import parse_yaml

    if "=" not in text:
        raise ToolboxError(f"--sweep must look like 'data.noise.sigma=[0.01,0.05,0.1]', got {text!r}")
    path, _, raw = text.partition("=")
    keys = path.strip().split(".")
    if keys[:2] == ["data", "noise"]:
        keys = keys[2:]
    elif keys[:1] == ["noise"]:
        keys = keys[1:]
    else:
        raise ToolboxError(f"--sweep varies a noise option (data.noise.KEY), got {path!r}")
    values = parse_yaml(raw, "--sweep")
    if not keys or not isinstance(values, list) or not values:
        raise ToolboxError(f"--sweep needs an option and a non-empty list of values, got {text!r}")
    return keys, values


def _with(spec: dict, keys: list[str], value) -> dict:
    spec = copy.deepcopy(spec)
    node = spec
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return spec


def sweep(model_path: Path, clean_paths, registry, sweep_text: str, noise_spec=None, out_dir=None,
          device_name: str = "auto", seed: int = 12345, console=None, ensemble: int = 1,
          true_sigma: bool = False, inversion: dict | None = None, window: str | None = None,
          amp: bool = False, adapt: int = 0) -> dict:
    from toolbox.console import make_console
    from toolbox.data.normalize import describe_range
    from toolbox.distributed import pick_device
    from toolbox.evaluation import _score_case, build_cases
    from toolbox.infer import check_options, load_trained_model

    console = console or make_console()
    keys, values = parse_sweep(sweep_text)
    device = pick_device(device_name)
    model = load_trained_model(model_path, device, registry, inversion)
    check_options(model, ensemble=ensemble, true_sigma=true_sigma, adapt=adapt)  # the plain model scores as it is
    model = check_options(model, window=window, amp=amp)  # every row denoises with these
    base = noise_spec or model.recipe["data"].get("noise")
    if not base:
        raise ToolboxError("give --noise (the model's recipe has no noise model to sweep)")
    base_dir = Path(model_path) if Path(model_path).is_dir() else Path(".")
    out_dir = Path(out_dir or base_dir / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ToolboxError(f"{out_dir}: exists and is not empty; pick another -o")
    name = ".".join(keys)
    rows = []
    for value in values:
        spec = _with(base, keys, value)
        cases = build_cases(model, clean_paths, registry, noise_spec=spec, seed=seed)
        for case in cases:
            case_rows, _ = _score_case(model, case, device, out_dir / f"{name}_{value}", ensemble, true_sigma,
                                       adapt)
            rows += [{"level": value, **row} for row in case_rows]
        console.print(f"{name} = {value}: {len(cases)} image(s)")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    mean = {m: {str(v): {k: float(np.mean([r[k] for r in rows if r["method"] == m and r["level"] == v]))
                         for k in ("psnr", "ssim", "hf_power")} for v in values} for m in methods}
    report = {"model": str(model.checkpoint), "option": f"data.noise.{name}", "levels": values,
              "noise": base, "data_range": describe_range(model.recipe["data"]["normalize"]),
              "sigma_known": bool(rows[0]["sigma_known"]), "rows": rows, "mean": mean}
    _write(out_dir, report, methods)
    _print(report, methods, console)
    console.print(f"wrote {out_dir / 'sweep.csv'}, {out_dir / 'sweep.json'} and {out_dir / 'sweep.png'}")
    return report


def _write(out_dir: Path, report: dict, methods: list[str]) -> None:
    from toolbox.evaluation import write_reports
    from toolbox.figures import write_line_plot

    write_reports(out_dir, report, "sweep")
    levels = [float(v) for v in report["levels"]]
    for metric in ("psnr", "ssim"):
        series = {m: [report["mean"][m][str(v)][metric] for v in report["levels"]] for m in methods}
        write_line_plot(out_dir / ("sweep.png" if metric == "psnr" else "sweep_ssim.png"), levels, series,
                        f"{metric.upper()} against {report['option']} ({report['data_range']})",
                        report["option"], "PSNR dB" if metric == "psnr" else "SSIM")


def _print(report: dict, methods: list[str], console) -> None:
    from rich.table import Table

    known = "true noise level" if report["sigma_known"] else "noise level estimated from each image"
    table = Table(title=f"Mean PSNR dB / SSIM by {report['option']} (baselines given the {known}; "
                        f"{report['data_range']})")
    table.add_column("method", no_wrap=True)
    for value in report["levels"]:
        table.add_column(str(value), justify="right", no_wrap=True)
    for method in methods:
        cells = [report["mean"][method][str(v)] for v in report["levels"]]
        table.add_row(method, *(f"{c['psnr']:.2f} / {c['ssim']:.3f}" for c in cells))
    console.print(table)
