"""report: cell records -> runs.csv (a row per image), per-axis tables, DVC metrics and plots, labelled grids.

The axes are whatever varied among the ok cells (any key of a cell's config), not a fixed list. Images are streamed:
each is decoded once, measured (quality.py), thumbnailed and pasted into its grid page, then dropped, so memory does
not grow with the number of cells.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from .config import SWEEP_AXES, ConfigError
from .grids import axis_labels, fmt, grid_layout, new_grid, paste_cell, short, split_pages
from .images import mask_outline, write_json
from . import ratings, records
from .machine import describe
from .records import RECORD_SETTINGS, CellRecord

# Per-image metrics, and which way is better ("one": closest to 1). Generate measures the first five; the report
# adds the rest from the saved images (quality.py, diversity) and, optionally, a CLIP checkpoint.
BETTER = {
    "seconds": "min",  # wall time of the pipeline call, per image
    "peak_memory_mb": "min",  # peak memory during the call (CUDA allocator, or process RSS on CPU)
    "drift_mae": "min",  # change outside the mask in the raw decoder output (should be none)
    "drift_psnr": "max",
    "change_inside_mae": "max",  # change inside the mask: what inpainting is for
    "seam": "min",  # gradient energy across the mask's edge relative to the photo's (1 = like the photo)
    "edge_delta_e": "min",  # CIEDE2000 between the rings just inside and just outside the mask's edge
    "texture_ratio": "one",  # high-frequency energy inside the mask / in the ring around it
    "outside_psnr": "max",  # saved image vs photo outside the mask (100 dB = identical, as designed)
    "outside_ssim": "max",
    "diversity": "max",  # mean pairwise pixel distance inside the mask between the seeds of one cell
    "clip_score": "max",  # prompt adherence by a CLIP checkpoint (optional)
}
METRICS = tuple(BETTER)
# dvc.yaml `plots:` draws each of PLOT_METRICS from plots/<metric>.csv (tests/test_report.py checks they agree).
PLOT_METRICS = ("drift_psnr", "change_inside_mae", "seam", "edge_delta_e", "texture_ratio", "seconds",
                "peak_memory_mb")
# Provenance copied from the record to each image's row (for the table, details and runs.csv).
PROVENANCE = ("error", "model_id", "model_revision", "device", "dtype", "scheduler_class", "working_size",
              "mask_method", "code_version", "sweep_id", "input", "mask", "soft_mask", "comet", "finished_at",
              "machine")
AXIS_ORDER = tuple(a for a in SWEEP_AXES if a != "seed")  # then any other varied key, by name; seed last
AUTO_GRID = ("guidance", "strength")  # report.rows / report.cols when null: these if they varied, else the first axes
# (params.yaml's comments on report.rows and report.cols say so; tests/test_report.py checks they agree)
THUMB_WIDTH = 160
WORKERS = max(1, min(4, os.cpu_count() or 1))  # threads decoding and measuring images (OpenCV releases the GIL)
OUTPUT_FOLDERS = ("grids", "thumbs", "plots", "comet")
# People's verdict per image (ratings.py), in runs.csv beside the metrics: strength, its interval, answers behind it.
HUMAN = ("human_score", "human_low", "human_high", "human_answers")


# ---------------------------------------------------------------------------------------------------------- records


def cell_settings(record: CellRecord) -> dict:
    """A cell's settings as flat config keys: its `config` (an older record's top-level settings, records.py), the
    top-level ones it lacks. `prompt` is the prompt used (the config's null means the case's own)."""
    settings = {key: getattr(record, name) for name, key in RECORD_SETTINGS.items()}
    for key, value in record.config.items():
        if not (key == "prompt" and value is None and "prompt" in settings):
            settings[key] = value
    settings.pop("seed", None)  # per image, below
    return {k: json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v for k, v in settings.items()}


def read_records(cells_dir: str | Path):
    """Yield (record, settings) for every cell record under cells_dir (records.read_records)."""
    for record in records.read_records(cells_dir):
        yield record, cell_settings(record)


def load_records(cells_dir: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """One row per generated image (its cell's settings, provenance, seed, path and metrics), and the setting keys."""
    rows, keys = [], {}
    for record, settings in read_records(cells_dir):
        keys.update(dict.fromkeys(settings))
        base = {"cell_id": record.cell_id, "status": record.status, "case": record.case,
                **settings, **{k: getattr(record, k) for k in PROVENANCE}}
        base["working_size"] = "x".join(map(str, record.working_size or []))
        base["machine"] = describe(record.machine) or None  # where it ran (machine.py); unknown in older records
        for entry in record.images:
            ok = record.ok and entry.path and Path(entry.path).is_file()
            rows.append({**base, "seed": entry.seed, "image": entry.path, "status": "ok" if ok else "failed",
                         "nsfw": entry.nsfw, **{m: entry.metrics.get(m) for m in METRICS}})
    keys = [*keys, "seed"]
    df = pd.DataFrame(rows, columns=list(dict.fromkeys(["cell_id", "status", "case", *keys, "image",
                                                        *PROVENANCE, "nsfw", *METRICS])))
    for k in keys:  # a key missing from some records is null there, like a null value
        df[k] = df[k].astype(object).where(df[k].notna(), None)
    for m in METRICS:
        df[m] = pd.to_numeric(df[m], errors="coerce").astype(float)
    return df, keys


# ------------------------------------------------------------------------------------------------------------- axes


def value_order(value) -> tuple:
    """Sort key for a setting's values: null, then "", then numbers ascending, then text."""
    if value is None:
        return (0, 0.0, "")
    if value == "":
        return (1, 0.0, "")
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return (2, float(value), "")
    return (3, 0.0, str(value))


def ordered_values(series: pd.Series) -> list:
    return sorted(set(series), key=value_order)


def value_codes(series: pd.Series) -> np.ndarray:
    """Each value's position in ordered_values (nulls included, unlike pandas' own grouping)."""
    at = {v: k for k, v in enumerate(ordered_values(series))}
    return np.array([at[v] for v in series], dtype=np.int64)


def find_axes(df: pd.DataFrame, keys: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The axes: setting keys that took more than one value within a case among the ok images. Keys that always
    change together (model.name and model.id) are one axis, named by the first; returns (axes, {axis: its twins})."""
    ok = df[df["status"] == "ok"]
    ordered = [k for k in AXIS_ORDER if k in keys] + sorted(k for k in keys if k not in AXIS_ORDER and k != "seed")
    axes, twins, seen = [], {}, {}
    for key in [*ordered, "seed"]:
        if not len(ok):
            break
        codes = pd.factorize(ok[key], use_na_sentinel=False)[0]
        if pd.Series(codes).groupby(ok["case"].to_numpy()).nunique().max() < 2:
            continue
        if codes.tobytes() in seen:
            twins[seen[codes.tobytes()]].append(key)
            continue
        seen[codes.tobytes()] = key
        axes.append(key)
        twins[key] = []
    if "seed" in axes:  # innermost: the seeds of a cell sit in neighbouring grids (diversity streams)
        axes.remove("seed")
        axes.append("seed")
    return axes, twins


def pick_axis(name: str | None, which: str, axes: list[str], twins: dict[str, list[str]]) -> str | None:
    """report.rows / report.cols: a varied key (or the last part of one: scheduler for model.scheduler, or a key that
    changed with one). Raises ConfigError naming it otherwise."""
    if name is None:
        return None
    by_name = {a: a for a in axes} | {t: a for a in axes for t in twins.get(a, ())}
    if name in by_name:
        return by_name[name]
    suffix = [a for k, a in by_name.items() if k.rsplit(".", 1)[-1] == name]
    if len(set(suffix)) == 1:
        return suffix[0]
    varied = ", ".join(axes) or "none: every cell has the same settings"
    raise ConfigError(f"report.{which}={name!r} did not vary in this sweep; choose one of the axes that did ({varied})")


def grid_axes(rows: str | None, cols: str | None, axes: list[str], twins: dict) -> tuple[str | None, str | None]:
    """The rows and columns of the grids: the configured keys, checked against the axes that varied (the config
    itself was checked by config.check_report_config); null picks from AUTO_GRID, then the axes."""
    picked_rows, picked_cols = pick_axis(rows, "rows", axes, twins), pick_axis(cols, "cols", axes, twins)
    if picked_rows is not None and picked_rows == picked_cols:  # two names of one axis: scheduler, model.scheduler
        raise ConfigError(f"report.rows={rows!r} and report.cols={cols!r} are the same axis, {picked_rows}; "
                          "choose two different ones")
    rows, cols = picked_rows, picked_cols
    free = [a for a in dict.fromkeys([*AUTO_GRID, *axes]) if a in axes and a not in (rows, cols)]
    if rows is None and free:
        rows = free.pop(0)
    if cols is None and free:
        cols = free.pop(0)
    return rows, cols


# ------------------------------------------------------------------------------------------------- images, streamed


def thumb_size(width: int, height: int) -> tuple[int, int]:
    return THUMB_WIDTH, max(1, round(height * THUMB_WIDTH / width))


@lru_cache(maxsize=4)
def _case_inputs(photo_path: str, mask_path: str, thumbs_dir: str) -> dict:
    """A photo and mask decoded once for all their images: arrays for the metrics, the mask's rings, the thumbnail
    of the photo (for difference heatmaps) and the mask's outline at thumbnail size (a transparent PNG)."""
    with Image.open(photo_path) as im:  # as generate reads it (no EXIF rotation), so pixels compare one to one
        photo = im.convert("RGB")
    with Image.open(mask_path) as m:
        mask_image = m.convert("L")
    mask = np.asarray(mask_image) > 127
    size = thumb_size(*photo.size)
    thumb = cv2.resize(np.asarray(photo), size, interpolation=cv2.INTER_AREA)
    small = np.asarray(mask_image.resize(size, Image.Resampling.BILINEAR)) > 127
    name = f"mask-{hashlib.sha1(mask_path.encode()).hexdigest()[:12]}.png"
    mask_outline(small).save(Path(thumbs_dir) / name)
    from .quality import mask_geometry  # here, not on top: scikit-image's import costs the review app half a second

    return {"photo": photo, "array": np.asarray(photo), "mask_image": mask_image, "geometry": mask_geometry(mask),
            "thumb": thumb.astype(np.int16), "outline": f"thumbs/{name}"}


def shrink(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Downscale to (width, height): area-average by a whole factor (OpenCV's fast path), then bilinear for the
    rest: faster than one area-average to a fractional size, and as smooth."""
    h, w = pixels.shape[:2]
    factor = min(w // size[0], h // size[1])
    if factor >= 2:
        pixels = cv2.resize(pixels, (w // factor, h // factor), interpolation=cv2.INTER_AREA)
    if pixels.shape[1::-1] == tuple(size):
        return pixels
    return cv2.resize(pixels, size, interpolation=cv2.INTER_LINEAR if factor >= 2 else cv2.INTER_AREA)


def _read_rgb(path: str) -> np.ndarray:
    """An 8-bit RGB image as an array. OpenCV decodes PNG faster than Pillow and releases the GIL while it does, so
    the report's threads decode side by side; it is the same pixels (a lossless file)."""
    pixels = cv2.imread(path, cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    if pixels is None:
        with Image.open(path) as im:  # a format OpenCV lacks: Pillow
            pixels = np.asarray(im.convert("RGB"))
    return pixels


def _measure(path: str, name: str, inputs: dict, cell_size: tuple[int, int], thumbs_dir: Path,
             keep_masked: bool) -> dict:
    """Everything one image gives, from one decode (runs in a worker thread): its quality metrics, its grid cell,
    its thumbnail and difference heatmap, and (for diversity) its pixels inside the mask."""
    pixels = _read_rgb(path)
    try:
        from .quality import image_quality  # imported by _case_inputs before any image is measured

        metrics = image_quality(pixels, inputs["array"], inputs["geometry"])
    except ValueError:  # not the photo's size: nothing to compare pixel for pixel
        metrics = {}
    # One shrink serves the grid cell and the thumbnail.
    cell = shrink(pixels, cell_size)
    size = thumb_size(pixels.shape[1], pixels.shape[0])
    thumb = shrink(cell if cell_size[0] >= size[0] else pixels, size)
    Image.fromarray(thumb).save(thumbs_dir / f"{name}.jpg", quality=85)
    thumbs = {"thumb": f"thumbs/{name}.jpg"}
    if inputs["thumb"].shape == thumb.shape:
        _heatmap(np.abs(thumb.astype(np.int16) - inputs["thumb"]).max(axis=2)).save(
            thumbs_dir / f"{name}-diff.jpg", quality=85)
        thumbs.update(diff=f"thumbs/{name}-diff.jpg", outline=inputs["outline"])
    masked = pixels[inputs["geometry"].mask] if keep_masked and pixels.shape[:2] == inputs["array"].shape[:2] \
        else None
    return {"metrics": metrics, "cell": Image.fromarray(cell), "thumbs": thumbs, "masked": masked}


def _heatmap(diff: np.ndarray) -> Image.Image:
    """|output - photo| (0..255 per pixel) as a black -> red -> yellow -> white heatmap, scaled so 64 is full red."""
    t = np.clip(diff / 64.0, 0, 3) / 3
    rgb = np.stack([np.clip(3 * t, 0, 1), np.clip(3 * t - 1, 0, 1), np.clip(3 * t - 2, 0, 1)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


class _Diversity:
    """Mean pairwise pixel distance inside the mask between the seeds of one cell. Each image's masked pixels wait
    only until its cell's last seed is seen (seed is the innermost slice, so that is a few grids later)."""

    def __init__(self, df: pd.DataFrame):
        ok = df[df["status"] == "ok"]
        self.expected = ok.groupby("cell_id").size().to_dict()
        self.waiting: dict[str, list] = {}
        self.values: dict[int, float] = {}

    def wants(self, cell: str) -> bool:
        return self.expected.get(cell, 0) >= 2

    def add(self, index: int, cell: str, pixels: np.ndarray | None) -> None:
        if pixels is None or not self.wants(cell):
            return
        group = self.waiting.setdefault(cell, [])
        group.append((index, pixels))
        if len(group) == self.expected[cell]:
            del self.waiting[cell]
            distances = [float(np.abs(a[1].astype(np.float32) - b[1]).mean()) / 255.0
                         for a, b in itertools.combinations(group, 2)]
            for i, _ in group:
                self.values[i] = round(float(np.mean(distances)), 6)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=_-]+", "_", text).strip("_") or "none"


def render_images(
    df: pd.DataFrame, axes: list[str], rows: str | None, cols: str | None, out_dir: Path, *, cell_size: int,
    max_megapixels: float,
) -> tuple[list[dict], dict[int, dict], dict[int, dict]]:
    """One pass over every image: the quality metrics, thumbnails (output, difference heatmap, mask outline) and the
    labelled grids, one PNG per case and slice of the axes that are neither rows nor columns, split into parts where
    a grid would exceed `max_megapixels` (cells keep `cell_size`).

    Returns (grids [{path, title, case, fixed, cells, cell_width, size, part}], {row: metrics}, {row: thumbnails})."""
    grids, measured, thumbs = [], {}, {}
    diversity = _Diversity(df)
    fixed_axes = [a for a in axes if a not in (rows, cols)]
    index = {a: {v: i for i, v in enumerate(ordered_values(df[a]))} for a in axes}
    cap = max_megapixels * 1e6
    thumbs_dir = out_dir / "thumbs"

    pool = ThreadPoolExecutor(max_workers=WORKERS)
    cell_px, pending = {}, None

    def job(item):
        """Submitted to the pool for an ok image; a failed one has nothing to decode."""
        i, r, _, _ = item
        if r["status"] != "ok":
            return None
        inputs = _case_inputs(r["input"], r["mask"], str(thumbs_dir))
        return pool.submit(_measure, r["image"], f"{r['cell_id']}-seed-{r['seed']}", inputs, cell_px[r["case"]],
                           thumbs_dir, diversity.wants(r["cell_id"]))

    for case in sorted(df["case"].dropna().unique(), key=str):
        case_df = df[df["case"] == case]
        row_values = ordered_values(case_df[rows]) if rows else [None]
        col_values = ordered_values(case_df[cols]) if cols else [None]
        row_at = {v: k for k, v in enumerate(row_values)}
        col_at = {v: k for k, v in enumerate(col_values)}
        first = case_df.iloc[0]
        with Image.open(first["input"]) as im:
            aspect = im.height / im.width
        cell_px[case] = (cell_size, max(1, int(round(cell_size * aspect))))
        inputs = _case_inputs(first["input"], first["mask"], str(thumbs_dir))
        side = {"input": Image.fromarray(shrink(inputs["array"], cell_px[case])),
                "mask": Image.fromarray(shrink(np.asarray(inputs["mask_image"]), cell_px[case]))}
        slices: dict[tuple, list[int]] = {}
        for i, key in zip(case_df.index, zip(*([index[a][v] for v in case_df[a]] for a in fixed_axes))):
            slices.setdefault(key, []).append(i)
        if not fixed_axes:
            slices = {(): list(case_df.index)}
        for key in sorted(slices):
            fixed = {a: ordered_values(df[a])[k] for a, k in zip(fixed_axes, key)}
            title = f"{case}: " + ", ".join(f"{a} = {short(v)}" for a, v in fixed.items())
            title = title.rstrip(": ")
            rl, cl = axis_labels(rows, row_values), axis_labels(cols, col_values)

            def fits(n_r, n_c, rl=rl, cl=cl, title=title):
                L = grid_layout(n_r, n_c, rl, cl, title, cell_size, aspect, side=2)
                return L["width"] * L["height"] <= cap

            try:
                pages = split_pages(len(row_values), len(col_values), fits)
            except ValueError as e:
                raise ConfigError(f"report.max_megapixels={max_megapixels} is too small for one cell of "
                                  f"report.cell_size={cell_size} pixels") from e
            name = "__".join([_slug(str(case))] + [f"{a}={_slug(fmt(v))}" for a, v in fixed.items()])
            members = slices[key]
            for part, (page_rows, page_cols) in enumerate(pages, 1):
                prl = [rl[k] for k in page_rows]
                pcl = [cl[k] for k in page_cols]
                suffix = f" (part {part} of {len(pages)})" if len(pages) > 1 else ""
                layout = grid_layout(len(prl), len(pcl), prl, pcl, title + suffix, cell_size, aspect, side=2)
                grid = new_grid(layout, title + suffix, prl, pcl, side)
                drawn = set()
                todo = []
                for i in members:
                    r = df.loc[i]
                    ri = row_at[r[rows]] if rows else 0
                    ci = col_at[r[cols]] if cols else 0
                    if ri in page_rows and ci in page_cols:
                        todo.append((i, r, ri - page_rows.start, ci - page_cols.start))
                for (i, r, ri, ci), done in zip(todo, _in_threads(pool, todo, job)):
                    if done is None:
                        paste_cell(grid, layout, ri, ci, "failed")
                        continue
                    measured[i], thumbs[i] = done["metrics"], done["thumbs"]
                    diversity.add(i, r["cell_id"], done["masked"])
                    paste_cell(grid, layout, ri, ci, done["cell"])
                    drawn.add((ri, ci))
                path = out_dir / "grids" / (name + (f"__part={part}of{len(pages)}" if len(pages) > 1 else "")
                                            + ".png")
                if pending is not None:  # at most one grid waits to be written: memory stays one page or two
                    pending.result()
                pending = pool.submit(_write_png, np.asarray(grid), path)
                grids.append({"path": path, "title": title + suffix, "case": case, "fixed": fixed,
                              "cells": len(drawn), "cell_width": layout["cw"], "size": grid.size, "part": part})
    pool.shutdown()  # waits for the last grid
    if pending is not None:
        pending.result()
    for i, value in diversity.values.items():
        measured.setdefault(i, {})["diversity"] = value
    return grids, measured, thumbs


def _write_png(pixels: np.ndarray, path: Path) -> None:
    """A grid as PNG (fastest compression, lossless), via a temporary file and a rename. OpenCV's encoder releases
    the GIL, so the next grid's images decode meanwhile."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise OSError(f"could not encode {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data.tobytes())
    os.replace(tmp, path)


def _in_threads(pool: ThreadPoolExecutor, items: list, submit):
    """Yield each item's result in order, keeping at most 2 x WORKERS in flight (so memory stays bounded)."""
    window = []
    for item in items:
        window.append(submit(item))
        if len(window) > 2 * WORKERS:
            first = window.pop(0)
            yield first.result() if first is not None else None
    for future in window:
        yield future.result() if future is not None else None


# ----------------------------------------------------------------------------------------------------------- tables


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The metrics this sweep has values for (diversity needs several seeds, clip_score a CLIP checkpoint)."""
    return [m for m in METRICS if m in df and df.loc[df["status"] == "ok", m].notna().any()]


def _goodness(metric: str, values: pd.Series) -> pd.Series:
    """Higher is better, whatever the metric: max as is, min negated, "one" by closeness to 1 in ratio."""
    how = BETTER[metric]
    if how == "max":
        return values
    if how == "min":
        return -values
    return -np.abs(np.log(values.where(values > 0)))


def axis_summary(df: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """Mean, spread (std, min, max over the other axes) and image count of every metric for each value of each
    axis, values in order and as words (fmt)."""
    ok, metrics = df[df["status"] == "ok"], metric_columns(df)
    parts = []
    for axis in axes:
        key = value_codes(ok[axis])
        agg = ok.groupby(key)[metrics].agg(["mean", "std", "min", "max"])
        agg.columns = [f"{m}_{s}" for m, s in agg.columns]
        agg.insert(0, "images", ok.groupby(key).size())
        values = ordered_values(ok[axis])
        agg.insert(0, "value", [fmt(values[k]) for k in agg.index])
        agg.insert(0, "axis", axis)
        parts.append(agg.sort_index().reset_index(drop=True))
    if not parts:
        return pd.DataFrame(columns=["axis", "value", "images"])
    return pd.concat(parts, ignore_index=True)


def write_plots(by_axis: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The CSVs behind the DVC plots: plots/<metric>.csv (long format, a row per axis value, `setting` = "axis =
    value") for dvc.yaml, whatever the axes; and plots/axes/<axis>.csv, the mean of every metric per value of one
    axis. The plotted metrics are always there (empty when unmeasured), so `dvc plots show` never misses a field."""
    written = []
    (out_dir / "plots" / "axes").mkdir(parents=True, exist_ok=True)
    for metric in PLOT_METRICS:
        table = pd.DataFrame({
            "setting": [f"{a} = {short(v)}" for a, v in zip(by_axis["axis"], by_axis["value"])],
            "axis": by_axis["axis"], "value": by_axis["value"], "images": by_axis["images"],
            metric: by_axis.get(f"{metric}_mean"), f"{metric}_std": by_axis.get(f"{metric}_std")})
        path = out_dir / "plots" / f"{metric}.csv"
        table.to_csv(path, index=False)
        written.append(path)
    for axis, part in by_axis.groupby("axis", sort=False):
        table = part[["value", "images", *[c for c in part.columns if c.endswith("_mean")]]]
        table = table.rename(columns=lambda c: c.removesuffix("_mean")).rename(columns={"value": axis})
        path = out_dir / "plots" / "axes" / f"{_slug(axis)}.csv"
        table.to_csv(path, index=False)
        written.append(path)
    return written


def summary(df: pd.DataFrame, axes: list[str]) -> dict:
    """The numbers `dvc metrics show` prints: counts and metric means; and the best image for each metric."""
    ok = df[df["status"] == "ok"]
    out = {
        "cells": int(df["cell_id"].nunique()),
        "images": int(len(df)),
        "ok": int(len(ok)),
        "failed": int((df["status"] == "failed").sum()),
        "axes": list(axes),
        "mean": {},
    }
    best = {}
    for metric in metric_columns(df):
        values = ok[metric][np.isfinite(ok[metric])]
        if not len(values):
            continue
        out["mean"][metric] = round(float(values.mean()), 6)
        good = _goodness(metric, values).dropna()
        if not len(good):
            continue
        row = ok.loc[good.idxmax()]
        best[metric] = {"better": {"min": "lower", "max": "higher", "one": "closer to 1"}[BETTER[metric]],
                        "cell_id": row["cell_id"], "value": float(row[metric]), "case": row["case"],
                        **{a: _plain(row[a]) for a in axes}, "seed": _plain(row["seed"])}
    out["best"] = best
    return out


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def _display(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """runs.csv's view: empty settings as the words the grids and page use ("(none)", "(default)")."""
    out = df.copy()
    for k in keys:
        if k in out:
            out[k] = out[k].map(lambda v: fmt(v) if v is None or v == "" else v)
    return out


def build_report(
    cells_dir: str | Path,
    out_dir: str | Path,
    *,
    rows: str | None,
    cols: str | None,
    cell_size: int,
    max_megapixels: float,
    clip,
    ratings_dir: str | Path | None,
) -> dict:
    """Write runs.csv, by_axis.csv, plots/, metrics.json (numbers for DVC), best.json, ranking.csv, grids/ and
    thumbs/.

    The settings are report.* (checked by config.check_report_config); `clip` is a loaded CLIP checkpoint
    (clip_score.load_clip) or None; `ratings_dir` holds people's answers (paths.ratings; None: no answers).

    Returns the summary, with the table (`df`), the axes, grids and thumbnails for the HTML page and Comet.
    """
    # 1. Start from an empty report folder, so no grid of an earlier sweep lingers.
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for folder in OUTPUT_FOLDERS:  # all exist afterwards, even empty: they are DVC outputs
        shutil.rmtree(out_dir / folder, ignore_errors=True)
        (out_dir / folder).mkdir()
    _case_inputs.cache_clear()

    # 2. A row per image; the axes are the settings that varied.
    df, keys = load_records(cells_dir)
    axes, twins = find_axes(df, keys)
    rows, cols = grid_axes(rows, cols, axes, twins)

    # 3. Every image once: metrics, thumbnails, grids.
    grids, measured, thumbs = render_images(df, axes, rows, cols, out_dir, cell_size=cell_size,
                                            max_megapixels=max_megapixels) if len(df) else ([], {}, {})
    for i, values in measured.items():
        for m, v in values.items():
            df.at[i, m] = v
    if clip is not None:
        df = add_clip_scores(df, clip)
    answers, _ = ratings.read_answers(ratings_dir) if ratings_dir is not None else ([], 0)
    df, human = people_choice(df, axes, answers)

    # 4. Tables for people (CSV), for DVC metrics and plots, and the best image per metric.
    _display(df, keys).to_csv(out_dir / "runs.csv", index=False)
    by_axis = add_human_figures(axis_summary(df, axes), human)
    by_axis.to_csv(out_dir / "by_axis.csv", index=False)
    write_plots(by_axis, out_dir)
    ranking_table(df, axes).to_csv(out_dir / "ranking.csv", index=False)
    people_charts = write_people_charts(human, out_dir)
    result = summary(df, axes)
    result["grids"] = len(grids)
    result["human"] = human_summary(human)
    write_json(result["best"], out_dir / "best.json")
    write_json({k: v for k, v in result.items() if k != "best"}, out_dir / "metrics.json")
    constant = {k: _plain(df[k].iloc[0]) for k in [*keys, *PROVENANCE] if k in df and k not in axes and len(df)
                and df[k].astype(str).nunique() == 1 and df[k].iloc[0] is not None}
    return {**result, "df": df, "keys": keys, "rows": rows, "cols": cols, "twins": twins, "by_axis": by_axis,
            "people": human, "people_charts": people_charts,
            "constant": constant, "grid_files": grids, "thumbs": thumbs,
            "sweep_ids": sorted({str(s) for s in df.get("sweep_id", pd.Series(dtype=str)).dropna()})}


# ---------------------------------------------------------------------------------------------------- people's choice


def people_choice(df: pd.DataFrame, axes: list[str], answers: list[ratings.Answer]) -> tuple[pd.DataFrame, dict]:
    """People's verdict from the answers about the view's ok images: HUMAN columns per image, figures per value of
    every axis (ratings.axis_figures), agreement between raters, and the rank correlation of each metric's goodness
    with the people's score (Spearman, over the rated images): which metric agrees with people."""
    from scipy.stats import spearmanr

    df = df.copy()
    ok = df["status"] == "ok"
    keys = [(c, int(s)) if good else None for c, s, good in zip(df["cell_id"], df["seed"], ok)]
    ranking = ratings.rank(answers, {k for k in keys if k is not None})
    at = ranking.index()
    for column, values in (("human_score", ranking.strength), ("human_low", ranking.low),
                           ("human_high", ranking.high)):
        df[column] = [round(float(values[at[k]]), 4) if k in at else np.nan for k in keys]
    df["human_answers"] = [int(ranking.answers[at[k]]) if k in at else (0 if k else np.nan) for k in keys]
    values = {a: {k: v for k, v in zip(keys, df[a]) if k is not None} for a in axes}
    rated = df[df["human_score"].notna()]
    correlation = {}
    for metric in metric_columns(df):
        good = _goodness(metric, rated[metric])
        both = good.notna() & np.isfinite(good)
        if both.sum() >= 3 and good[both].nunique() > 1 and rated.loc[both, "human_score"].nunique() > 1:
            rho = spearmanr(good[both], rated.loc[both, "human_score"]).statistic
            correlation[metric] = {"rho": round(float(rho), 4), "images": int(both.sum())}
    used = [a for a in answers if a.left in at and a.right in at]
    return df, {"answers": ranking.used, "ignored": ranking.ignored, "raters": ranking.raters,
                "images": len(at), "axes": ratings.axis_figures(ranking, values),
                "agreement": ratings.agreement(used), "correlation": correlation}


def add_human_figures(by_axis: pd.DataFrame, human: dict) -> pd.DataFrame:
    """by_axis.csv's people's columns: per value, its mean strength, interval, rated images and answers."""
    by_axis = by_axis.copy()
    columns = {"human_score": "score", "human_low": "low", "human_high": "high", "human_images": "images",
               "human_answers": "answers"}
    rows = []
    for axis, value in zip(by_axis["axis"], by_axis["value"]):
        figures = {fmt(v): f for v, f in human["axes"].get(axis, {}).get("values", {}).items()}
        f = figures.get(value)
        rows.append({c: (f[k] if f else (0 if k in ("images", "answers") else np.nan)) for c, k in columns.items()})
    for c in columns:
        by_axis[c] = [r[c] for r in rows]
    return by_axis


def write_people_charts(human: dict, out_dir: Path) -> dict[str, str]:
    """Per axis, the people's score of each value with its interval, as SVG: plots/people/<axis>.svg (the page shows
    them, Comet gets the files). Returns {axis: svg}."""
    from .charts import axis_chart

    folder = out_dir / "plots" / "people"
    folder.mkdir(parents=True, exist_ok=True)
    charts = {}
    for axis, fig in human["axes"].items():
        values = sorted(fig["values"], key=value_order)
        f = [fig["values"][v] for v in values]
        charts[axis] = axis_chart(f"people's score vs {axis}", [short(v, 14) for v in values],
                                  [x["score"] for x in f], [None] * len(f), [x["low"] for x in f],
                                  [x["high"] for x in f], [x["answers"] for x in f],
                                  band=f"{ratings.LEVEL:.0%} interval", counted="answer(s)")
        (folder / f"{_slug(axis)}.svg").write_text(charts[axis], encoding="utf-8")
    return charts


def ranking_table(df: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """ranking.csv: the rated images, best first, with their settings, strength, interval and answers."""
    rated = df[df["human_score"].notna()].sort_values("human_score", ascending=False)
    table = rated[["cell_id", "seed", "case", *[a for a in axes if a != "seed"], *HUMAN]].copy()
    table.insert(0, "rank", range(1, len(table) + 1))
    return table


def _finite(value) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 4)


def human_summary(human: dict) -> dict:
    """metrics.json's "human": counts, agreement, and per axis value its score, so that `dvc exp show` and `dvc exp
    diff` compare people's verdicts across experiments; per axis how sure its winner is (a share of resamples)."""
    score = {f"{axis}={fmt(v)}": _finite(fig["values"][v]["score"]) for axis, fig in human["axes"].items()
             for v in sorted(fig["values"], key=value_order)}
    return {"answers": human["answers"], "raters": human["raters"], "rated_images": human["images"],
            "ignored_answers": human["ignored"], "agreement_alpha": _finite(human["agreement"]),
            "score": score, "winner_sure": {a: _finite(f["sure"]) for a, f in human["axes"].items()
                                            if f["winner"] is not None}}


def add_clip_scores(df: pd.DataFrame, clip) -> pd.DataFrame:
    """`clip_score` of every ok image against its prompt, on the crop of the mask's bounding box."""
    from .clip_score import clip_scores, mask_crop

    df = df.copy()
    ok = df[df["status"] == "ok"]
    crops = []
    for _, r in ok.iterrows():
        with Image.open(r["mask"]) as m, Image.open(r["image"]) as im:
            crops.append(mask_crop(im.convert("RGB"), np.asarray(m.convert("L")) > 127))
    scores = clip_scores(clip, crops, ok["prompt"].tolist()) if len(ok) else []
    df["clip_score"] = np.nan
    df.loc[ok.index, "clip_score"] = [round(s, 4) for s in scores]
    return df
