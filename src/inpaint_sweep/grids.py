"""Labelled picture grids (the A1111 X/Y plot layout), drawn a cell at a time so a report never holds more than one
grid page and one decoded image; and the short labels every part of the report uses for a setting's value."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from .images import font

PAD = 4
LABEL_CHARS = 28  # a value longer than this (a prompt) is shortened on a grid's margin; tables show it whole


def fmt(value) -> str:
    """A setting's value as words, the same everywhere in the report: "" is "(none)", null is "(default)"."""
    if value is None:
        return "(default)"
    if value == "":
        return "(none)"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def short(value, limit: int = LABEL_CHARS) -> str:
    """fmt(value), shortened to `limit` characters with "..." in the middle of what is cut."""
    text = fmt(value)
    if len(text) <= limit:
        return text
    keep = limit - 3
    return text[: keep - keep // 3] + "..." + text[len(text) - keep // 3:]


_PROBE = ImageDraw.Draw(Image.new("RGB", (1, 1)))


def text_width(text: str, f) -> int:
    x0, _, x1, _ = _PROBE.textbbox((0, 0), text, font=f)
    return x1 - x0


def grid_layout(n_rows: int, n_cols: int, row_labels: list[str], col_labels: list[str], title: str,
                cell_width: int, aspect: float, side: int = 0) -> dict:
    """Pixel sizes of a grid of n_rows x n_cols cells `cell_width` wide (height = width x aspect), with `side` images
    stacked in a captioned column at the left."""
    label_font, title_font = font(max(12, cell_width // 12)), font(max(14, cell_width // 10))
    cw, ch = cell_width, max(1, int(round(cell_width * aspect)))
    caption, top_title = label_font.size + 6, title_font.size + 16
    top_labels = label_font.size + 12 if any(col_labels) else 0
    side_width = cw + 24 if side else 0
    left = side_width + max([text_width(t, label_font) for t in row_labels if t] + [0]) + 16
    width = max(left + n_cols * (cw + PAD) + PAD, text_width(title, title_font) + 16)
    height = max(top_title + top_labels + n_rows * (ch + PAD) + PAD,
                 top_title + side * (caption + ch + PAD) + PAD)
    return dict(cw=cw, ch=ch, label_font=label_font, title_font=title_font, caption=caption, top_title=top_title,
                top_labels=top_labels, side_width=side_width, left=left, width=width, height=height)


def split_pages(n_rows: int, n_cols: int, fits) -> list[tuple[range, range]]:
    """Cut an n_rows x n_cols grid into as few pages (row range, column range) as `fits(rows, cols)` allows, all about
    the same size. Raises ValueError when not even one cell fits."""
    if not fits(1, 1):
        raise ValueError("not even one cell fits")
    cols = n_cols
    while cols > 1 and not fits(1, cols):
        cols -= 1
    rows = 1
    while rows < n_rows and fits(rows + 1, cols):
        rows += 1
    col_pages, row_pages = math.ceil(n_cols / cols), math.ceil(n_rows / rows)
    cols, rows = math.ceil(n_cols / col_pages), math.ceil(n_rows / row_pages)  # balance the pages
    return [(range(r, min(r + rows, n_rows)), range(c, min(c + cols, n_cols)))
            for r in range(0, n_rows, rows) for c in range(0, n_cols, cols)]


def new_grid(layout: dict, title: str, row_labels: list[str], col_labels: list[str],
             side: dict[str, Image.Image] | None = None) -> Image.Image:
    """A white grid page with its title, side column and margin labels drawn; cells are pasted with paste_cell."""
    L = layout
    grid = Image.new("RGB", (L["width"], L["height"]), "white")
    grid.info["cell_width"] = L["cw"]
    draw = ImageDraw.Draw(grid)
    draw.text((8, 8), title, fill="black", font=L["title_font"])
    side = side or {}
    for k, (name, image) in enumerate(side.items()):
        y = L["top_title"] + k * (L["caption"] + L["ch"] + PAD)
        draw.text((8, y), name, fill="black", font=L["label_font"])
        grid.paste(_fit(image, L), (8, y + L["caption"]))
    if side:
        x = L["side_width"] - 8
        draw.line([x, L["top_title"], x, L["height"] - PAD], fill=(180, 180, 180), width=1)
    for j, label in enumerate(col_labels):
        x = L["left"] + PAD + j * (L["cw"] + PAD) + (L["cw"] - text_width(label, L["label_font"])) // 2
        draw.text((x, L["top_title"] + 2), label, fill="black", font=L["label_font"])
    for i, label in enumerate(row_labels):
        y = L["top_title"] + L["top_labels"] + PAD + i * (L["ch"] + PAD) + L["ch"] // 2 - L["label_font"].size // 2
        draw.text((L["side_width"] + 8, y), label, fill="black", font=L["label_font"])
    return grid


def _fit(image: Image.Image, layout: dict) -> Image.Image:
    size = (layout["cw"], layout["ch"])
    return image if image.size == size else image.convert("RGB").resize(size, Image.Resampling.LANCZOS,
                                                                          reducing_gap=3.0)


def paste_cell(grid: Image.Image, layout: dict, i: int, j: int, image: Image.Image | str | None) -> None:
    """Put an image at row i, column j of the page; None or a string (why it is missing) draws a marked blank."""
    L = layout
    x = L["left"] + PAD + j * (L["cw"] + PAD)
    y = L["top_title"] + L["top_labels"] + PAD + i * (L["ch"] + PAD)
    if isinstance(image, Image.Image):
        grid.paste(_fit(image, L), (x, y))
        return
    draw = ImageDraw.Draw(grid)
    draw.rectangle([x, y, x + L["cw"] - 1, y + L["ch"] - 1], fill=(235, 235, 235), outline=(200, 0, 0), width=2)
    draw.line([x, y, x + L["cw"] - 1, y + L["ch"] - 1], fill=(200, 0, 0), width=2)
    draw.text((x + 6, y + 6), image or "missing", fill=(200, 0, 0), font=L["label_font"])


def axis_labels(axis: str | None, values: list) -> list[str]:
    return [f"{axis} = {short(v)}" if axis else "" for v in values]


def labelled_grid(cells: dict, row_values: list, col_values: list, row_axis: str | None, col_axis: str | None,
                  title: str, *, cell_size: int, side: dict[str, Image.Image] | None = None) -> Image.Image:
    """A whole grid in one call (small grids and tests): `cells` maps (row value, column value) to an image, None or
    a string saying why it is missing."""
    sample = next((im for im in cells.values() if isinstance(im, Image.Image)), None)
    aspect = sample.height / sample.width if sample else 1.0
    rl, cl = axis_labels(row_axis, row_values), axis_labels(col_axis, col_values)
    layout = grid_layout(len(row_values), len(col_values), rl, cl, title, cell_size, aspect, len(side or {}))
    grid = new_grid(layout, title, rl, cl, side)
    for i, r in enumerate(row_values):
        for j, c in enumerate(col_values):
            paste_cell(grid, layout, i, j, cells.get((r, c)))
    return grid
