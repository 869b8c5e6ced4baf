"""Small image and file helpers shared by the stages: fonts, atomic writes, labelled grids."""

from __future__ import annotations

import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


@lru_cache(maxsize=None)
def font(size: int) -> ImageFont.ImageFont:
    """Pillow's built-in scalable font: nothing to download, same look everywhere."""
    return ImageFont.load_default(size=size)


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_image(image: Image.Image, path: str | os.PathLike) -> None:
    """Write a PNG via a temporary file and a rename, so a crash never leaves half an image."""
    _atomic(Path(path), lambda tmp: image.save(tmp, format="PNG"))


def write_json(data, path: str | os.PathLike) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")

    _atomic(Path(path), write)


def to_mask_image(mask: np.ndarray) -> Image.Image:
    """A boolean mask as an 8-bit PNG-ready image: 255 inside, 0 outside."""
    return Image.fromarray(mask.astype(np.uint8) * 255, mode="L")


def fmt(value) -> str:
    if value == "" or value is None:
        return "(none)"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def labelled_grid(
    cells: dict[tuple, Image.Image | None],
    row_values: list,
    col_values: list,
    row_axis: str,
    col_axis: str,
    title: str,
    cell_size: int = 192,
) -> Image.Image:
    """A grid of images with `axis = value` labels on the margins and a title; missing cells are marked blanks."""
    label_font, title_font = font(max(12, cell_size // 12)), font(max(14, cell_size // 10))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_width(text, f):
        x0, _, x1, _ = probe.textbbox((0, 0), text, font=f)
        return x1 - x0

    row_labels = [f"{row_axis} = {fmt(v)}" for v in row_values]
    col_labels = [f"{col_axis} = {fmt(v)}" for v in col_values]
    # Cells keep the aspect ratio of the first real image.
    sample = next((im for im in cells.values() if im is not None), None)
    aspect = sample.height / sample.width if sample else 1.0
    cw, ch = cell_size, int(round(cell_size * aspect))
    left = max(text_width(t, label_font) for t in row_labels) + 16
    top_title, top_labels, pad = title_font.size + 16, label_font.size + 12, 4
    width = left + len(col_values) * (cw + pad) + pad
    width = max(width, text_width(title, title_font) + 16)
    height = top_title + top_labels + len(row_values) * (ch + pad) + pad

    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((8, 8), title, fill="black", font=title_font)
    for j, label in enumerate(col_labels):
        x = left + pad + j * (cw + pad) + (cw - text_width(label, label_font)) // 2
        draw.text((x, top_title + 2), label, fill="black", font=label_font)
    for i, label in enumerate(row_labels):
        y = top_title + top_labels + pad + i * (ch + pad)
        draw.text((8, y + ch // 2 - label_font.size // 2), label, fill="black", font=label_font)
        for j, col in enumerate(col_values):
            x = left + pad + j * (cw + pad)
            image = cells.get((row_values[i], col))
            if image is None:  # failed or missing cell: a marked blank, not a crash
                draw.rectangle([x, y, x + cw - 1, y + ch - 1], fill=(235, 235, 235), outline=(200, 0, 0), width=2)
                draw.line([x, y, x + cw - 1, y + ch - 1], fill=(200, 0, 0), width=2)
                draw.text((x + 6, y + 6), "missing", fill=(200, 0, 0), font=label_font)
            else:
                grid.paste(image.convert("RGB").resize((cw, ch), Image.Resampling.LANCZOS), (x, y))
    return grid
