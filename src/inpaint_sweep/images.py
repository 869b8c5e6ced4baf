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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Files are created with the user's umask (0644 under umask 022), as any tool's would be; mkstemp's are 0600.
FILE_MODE = 0o666 & ~_umask()


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_image(image: Image.Image, path: str | os.PathLike, compress_level: int = 6) -> None:
    """Write a PNG via a temporary file and a rename, so a crash never leaves half an image.

    compress_level 1 writes several times faster than the default 6 for a slightly larger (still lossless) file.
    """
    _atomic(Path(path), lambda tmp: image.save(tmp, format="PNG", compress_level=compress_level))


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
    cells: dict[tuple, Image.Image | str | None],
    row_values: list,
    col_values: list,
    row_axis: str,
    col_axis: str,
    title: str,
    cell_size: int = 192,
    side: dict[str, Image.Image] | None = None,
    max_megapixels: float | None = None,
) -> Image.Image:
    """A grid of images with `axis = value` labels on the margins and a title.

    `side` images (e.g. input and mask) are stacked in a captioned column left of the grid. A cell that is None (or a
    string saying why) is drawn as a marked blank. When the grid would exceed `max_megapixels`, the cells shrink until
    it fits; the cell width used is in `grid.info["cell_width"]`.
    """
    side = side or {}
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_width(text, f):
        x0, _, x1, _ = probe.textbbox((0, 0), text, font=f)
        return x1 - x0

    # 1. Labels and the cells' aspect ratio (that of the first real image).
    row_labels = [f"{row_axis} = {fmt(v)}" for v in row_values]
    col_labels = [f"{col_axis} = {fmt(v)}" for v in col_values]
    sample = next((im for im in cells.values() if isinstance(im, Image.Image)), None)
    aspect = sample.height / sample.width if sample else 1.0
    pad = 4

    def layout(cw: int) -> dict:
        """Sizes for cells `cw` pixels wide. Text scales with the cells, so a shrunk grid keeps its proportions."""
        label_font, title_font = font(max(12, cw // 12)), font(max(14, cw // 10))
        size = dict(cw=cw, ch=max(1, int(round(cw * aspect))), label_font=label_font, title_font=title_font,
                    caption=label_font.size + 6, top_title=title_font.size + 16, top_labels=label_font.size + 12,
                    side_width=cw + 24 if side else 0)
        size["left"] = size["side_width"] + max(text_width(t, label_font) for t in row_labels) + 16
        size["width"] = max(size["left"] + len(col_values) * (cw + pad) + pad, text_width(title, title_font) + 16)
        size["height"] = max(size["top_title"] + size["top_labels"] + len(row_values) * (size["ch"] + pad) + pad,
                             size["top_title"] + len(side) * (size["caption"] + size["ch"] + pad) + pad)
        return size

    # 2. Shrink the cells until the grid fits the megapixel cap.
    size = layout(cell_size)
    while max_megapixels and size["width"] * size["height"] > max_megapixels * 1e6 and size["cw"] > 8:
        scale = (max_megapixels * 1e6 / (size["width"] * size["height"])) ** 0.5
        size = layout(max(8, min(size["cw"] - 1, int(size["cw"] * scale))))
    if max_megapixels and size["width"] * size["height"] > max_megapixels * 1e6:
        raise ValueError(f"a {len(row_values)}x{len(col_values)} grid does not fit {max_megapixels} megapixels "
                         "even with 8-pixel cells")
    cw, ch, left, side_width, width, height = (size[k] for k in ("cw", "ch", "left", "side_width", "width", "height"))
    label_font, title_font, caption, top_title, top_labels = (
        size[k] for k in ("label_font", "title_font", "caption", "top_title", "top_labels"))

    # 3. Draw: title, side column, column and row labels, cells.
    grid = Image.new("RGB", (width, height), "white")
    grid.info["cell_width"] = cw
    draw = ImageDraw.Draw(grid)
    draw.text((8, 8), title, fill="black", font=title_font)
    for k, (name, image) in enumerate(side.items()):
        y = top_title + k * (caption + ch + pad)
        draw.text((8, y), name, fill="black", font=label_font)
        grid.paste(image.convert("RGB").resize((cw, ch), Image.Resampling.LANCZOS, reducing_gap=3.0), (8, y + caption))
    if side:
        draw.line([side_width - 8, top_title, side_width - 8, height - pad], fill=(180, 180, 180), width=1)
    for j, label in enumerate(col_labels):
        x = left + pad + j * (cw + pad) + (cw - text_width(label, label_font)) // 2
        draw.text((x, top_title + 2), label, fill="black", font=label_font)
    for i, label in enumerate(row_labels):
        y = top_title + top_labels + pad + i * (ch + pad)
        draw.text((side_width + 8, y + ch // 2 - label_font.size // 2), label, fill="black", font=label_font)
        for j, col in enumerate(col_values):
            x = left + pad + j * (cw + pad)
            image = cells.get((row_values[i], col))
            if not isinstance(image, Image.Image):  # failed or missing cell: a marked blank, not a crash
                draw.rectangle([x, y, x + cw - 1, y + ch - 1], fill=(235, 235, 235), outline=(200, 0, 0), width=2)
                draw.line([x, y, x + cw - 1, y + ch - 1], fill=(200, 0, 0), width=2)
                draw.text((x + 6, y + 6), image or "missing", fill=(200, 0, 0), font=label_font)
            else:
                grid.paste(image.convert("RGB").resize((cw, ch), Image.Resampling.LANCZOS, reducing_gap=3.0), (x, y))
    return grid
