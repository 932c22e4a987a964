"""Figures people judge denoising by: full views and zoomed crops, labelled with the scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolbox.checkpoint import atomic_write


def _middle_slice(array: np.ndarray, slice_axis):
    image = array[0]
    if image.ndim == 3:
        axis = slice_axis if slice_axis is not None else 0
        image = np.take(image, image.shape[axis] // 2, axis=axis)
    return image


def write_figure(path: Path, panels, slice_axis, display=None) -> None:
    """A row of full views and a row of 3x-zoomed centre crops, labelled with PSNR/SSIM.

    ``display`` (a ``Normalizer``) maps the images to the 0..1 shown (for CT the window);
    the scores are the ones given, taken over the whole unclipped image.
    """
    from PIL import Image, ImageDraw

    to_view = display.forward if display is not None else (lambda a: a)
    views = [np.clip(_middle_slice(to_view(np.asarray(p[1], dtype=np.float32)), slice_axis), 0, 1)
             for p in panels]
    h, w = views[0].shape
    # Small or narrow images are enlarged so that the panels are large enough to read and
    # their labels (two lines of about 26 characters) fit.
    scale = min(8, max(1, 256 // max(h, w), -(-160 // w)))
    width, height = w * scale, h * scale
    crop = max(4, min(h, w) // 3)  # a square centre crop, shown panel-wide
    top, left = (h - crop) // 2, (w - crop) // 2
    label = 28
    canvas = Image.new("L", (len(views) * width, height + width + 2 * label), 0)
    draw = ImageDraw.Draw(canvas)
    for index, ((title, _, score), view) in enumerate(zip(panels, views)):
        full = Image.fromarray((view * 255).astype(np.uint8)).resize((width, height), Image.NEAREST)
        zoom = Image.fromarray((view[top:top + crop, left:left + crop] * 255).astype(np.uint8))
        zoom = zoom.resize((width, width), Image.NEAREST)
        x = index * width
        canvas.paste(full, (x, label))
        canvas.paste(zoom, (x, 2 * label + height))
        draw.text((x + 3, 2), title[: max(8, width // 6)], fill=255)
        if score is not None:
            draw.text((x + 3, 14), f"{score[0]:.2f} dB / {score[1]:.3f}", fill=255)
        draw.text((x + 3, label + height + 2), "centre crop", fill=255)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))


def write_grid(path: Path, images: np.ndarray, columns: int | None = None) -> None:
    """Images ``(N, C, *spatial)`` (the first channel; a volume's middle slice) as one grey
    grid with a 2-pixel gap, enlarged so that small images stay visible.  Grey levels span
    the grid's 0.5th..99.5th percentiles, the same for every tile so that tiles compare
    (low-contrast images, such as phase-contrast micrographs, would be flat in 0..1)."""
    from PIL import Image

    views = [_middle_slice(np.asarray(image, np.float32), None) for image in images]
    low, high = np.percentile(np.stack(views), [0.5, 99.5])
    views = [np.clip((v - low) / max(float(high - low), 1e-12), 0, 1) for v in views]
    h, w = views[0].shape
    columns = columns or int(np.ceil(np.sqrt(len(views))))
    rows = -(-len(views) // columns)
    scale = min(4, max(1, 128 // max(h, w)))
    gap = 2
    canvas = Image.new("L", (columns * (w * scale + gap) - gap, rows * (h * scale + gap) - gap), 0)
    for index, view in enumerate(views):
        tile = Image.fromarray((view * 255).astype(np.uint8)).resize((w * scale, h * scale), Image.NEAREST)
        canvas.paste(tile, ((index % columns) * (w * scale + gap), (index // columns) * (h * scale + gap)))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))


# Distinct on screen and in grey: (red, green, blue) per series, cycled.
_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def write_line_plot(path: Path, xs: list[float], series: dict[str, list[float]], title: str, x_label: str,
                    y_label: str, log_x: bool | None = None) -> None:
    """A line per series against ``xs`` (a log axis when they span more than 10x, unless
    ``log_x`` says), with markers, a legend and labelled ticks (labels thinned where they
    would overlap); drawn with Pillow (no plotting library needed)."""
    from PIL import Image, ImageDraw

    width, height, left, right, top, bottom = 760, 460, 70, 220, 40, 60
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    log = (min(xs) > 0 and max(xs) / min(xs) > 10) if log_x is None else log_x
    to_x = np.log10 if log else (lambda v: np.asarray(v, dtype=float))
    x0, x1 = float(np.min(to_x(xs))), float(np.max(to_x(xs)))
    values = [v for ys in series.values() for v in ys if np.isfinite(v)]
    y0, y1 = (min(values), max(values)) if values else (0.0, 1.0)
    pad = 0.05 * (y1 - y0 or 1.0)
    y0, y1 = y0 - pad, y1 + pad

    def point(x, y):
        fx = (float(to_x(x)) - x0) / ((x1 - x0) or 1.0)
        fy = (y - y0) / ((y1 - y0) or 1.0)
        return left + fx * (width - left - right), height - bottom - fy * (height - top - bottom)

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    labelled = -1e9
    for x in xs:
        px, _ = point(x, y0)
        draw.line([px, height - bottom, px, height - bottom + 5], fill="black")
        if px - labelled >= 42:
            draw.text((px - 12, height - bottom + 8), f"{x:g}", fill="black")
            labelled = px
    for fraction in np.linspace(0, 1, 6):
        y = y0 + fraction * (y1 - y0)
        _, py = point(xs[0], y)
        draw.line([left - 5, py, left, py], fill="black")
        draw.text((4, py - 6), f"{y:.3g}", fill="black")
    for index, (name, ys) in enumerate(series.items()):
        colour = _COLOURS[index % len(_COLOURS)]
        points = [point(x, y) for x, y in zip(xs, ys) if np.isfinite(y)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        ly = top + 16 * index
        draw.line([width - right + 10, ly + 6, width - right + 30, ly + 6], fill=colour, width=3)
        draw.text((width - right + 35, ly), name[:28], fill="black")
    draw.text((left, 10), title[:100], fill="black")
    draw.text((left + (width - left - right) // 2 - 60, height - 22),
              x_label + (" (log scale)" if log else ""), fill="black")
    draw.text((4, top - 18), y_label, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))
