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
    scale = max(1, 256 // max(h, w))  # small images are enlarged so labels fit
    width, height = w * scale, h * scale
    crop = max(4, min(h, w) // 3)  # a square centre crop, shown panel-wide
    top, left = (h - crop) // 2, (w - crop) // 2
    label = 16
    canvas = Image.new("L", (len(views) * width, height + width + 2 * label), 0)
    draw = ImageDraw.Draw(canvas)
    for index, ((title, _, score), view) in enumerate(zip(panels, views)):
        full = Image.fromarray((view * 255).astype(np.uint8)).resize((width, height), Image.NEAREST)
        zoom = Image.fromarray((view[top:top + crop, left:left + crop] * 255).astype(np.uint8))
        zoom = zoom.resize((width, width), Image.NEAREST)
        x = index * width
        canvas.paste(full, (x, label))
        canvas.paste(zoom, (x, 2 * label + height))
        text = title if score is None else f"{title} {score[0]:.2f} dB / {score[1]:.3f}"
        draw.text((x + 3, 2), text[:48], fill=255)
        draw.text((x + 3, label + height + 2), "centre crop", fill=255)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))
