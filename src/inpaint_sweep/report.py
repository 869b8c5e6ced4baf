"""report: cell records -> runs.csv (a row per image), per-axis tables, DVC metrics and plots, labelled grids."""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .records import RECORD
from .config import SWEEP_AXES, ConfigError
from .images import fmt, labelled_grid, save_image, write_json
from .inpaint import seed_list

# Per-image metrics, and which way is better. Generate measures the first five; the report adds the last two.
BETTER = {
    "seconds": "min",  # wall time of the pipeline call, per image
    "peak_memory_mb": "min",  # peak memory during the call (CUDA allocator, or process RSS on CPU)
    "drift_mae": "min",  # change outside the mask in the raw decoder output (should be none)
    "drift_psnr": "max",
    "change_inside_mae": "max",  # change inside the mask: what inpainting is for
    "diversity": "max",  # mean pairwise pixel distance inside the mask between the seeds of one cell
    "clip_score": "max",  # prompt adherence by a CLIP checkpoint (optional)
}
METRICS = tuple(BETTER)
# dvc.yaml `plots:` draws each of PLOT_METRICS against each of PLOT_AXES (tests/test_report.py checks they agree).
PLOT_AXES = ("guidance", "steps", "strength")
PLOT_METRICS = ("drift_psnr", "change_inside_mae", "seconds", "peak_memory_mb")
THUMB_WIDTH = 160
# Pillow refuses to open images over 2 x MAX_IMAGE_PIXELS and warns above it; grids stay under, so anyone can open them.
MAX_GRID_MEGAPIXELS = Image.MAX_IMAGE_PIXELS / 1e6
OUTPUT_FOLDERS = ("grids", "thumbs", "plots", "comet")


def check_report_settings(rows: str, cols: str, cell_size: int, max_megapixels: float) -> None:
    """Raise ConfigError naming the first bad report.* value."""
    for key, axis in (("rows", rows), ("cols", cols)):
        if axis not in SWEEP_AXES:
            raise ConfigError(f"report.{key}={axis!r} is not an axis; choose one of {', '.join(SWEEP_AXES)}")
    if rows == cols:
        raise ConfigError(f"report.rows and report.cols must differ, both are {rows!r}")
    if cell_size < 16:
        raise ConfigError(f"report.cell_size must be >= 16 pixels, got report.cell_size={cell_size}")
    if not 0 < max_megapixels <= MAX_GRID_MEGAPIXELS:
        raise ConfigError(
            f"report.max_megapixels must be in (0, {MAX_GRID_MEGAPIXELS:.0f}], "
            f"got report.max_megapixels={max_megapixels}"
        )


def _image_entries(record: dict) -> list[dict]:
    """The record's images as [{seed, path, metrics}]; a failed cell gives one entry per seed with no path."""
    if record.get("images"):
        return record["images"]
    return [{"seed": s, "path": None, "metrics": {}} for s in seed_list(record.get("seed", 0))]


def load_records(cells_dir: str | Path) -> pd.DataFrame:
    """One row per generated image: its cell's settings and provenance, its seed, path and metrics."""
    rows = []
    for path in sorted(Path(cells_dir).glob(f"*/{RECORD}")):
        record = json.loads(path.read_text())
        entries = _image_entries(record)
        for key in ("images", "image", "metrics", "traceback"):
            record.pop(key, None)
        record["working_size"] = "x".join(map(str, record.get("working_size") or []))
        for entry in entries:
            ok = record.get("status") == "ok" and entry.get("path") and Path(entry["path"]).is_file()
            rows.append({**record, "seed": entry["seed"], "image": entry.get("path"),
                         "status": "ok" if ok else "failed",
                         **{m: (entry.get("metrics") or {}).get(m) for m in METRICS}})
    columns = ["cell_id", "status", "case", *SWEEP_AXES]
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=columns + ["image", *METRICS])
    rest = [c for c in df.columns if c not in columns]
    df = df[columns + rest].sort_values(["case", *SWEEP_AXES]).reset_index(drop=True)
    for m in METRICS:
        df[m] = pd.to_numeric(df[m], errors="coerce")
    return df


def _masked_pixels(image_path: str, mask: np.ndarray) -> np.ndarray:
    with Image.open(image_path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32)[mask] / 255.0


def add_diversity(df: pd.DataFrame) -> pd.DataFrame:
    """`diversity`: mean over pairs of seeds of one cell (same case and settings) of the mean absolute pixel
    difference inside the mask, in [0, 1]. Empty where a cell has fewer than two images."""
    df = df.copy()
    df["diversity"] = np.nan
    ok = df[df["status"] == "ok"]
    others = ["case", *[a for a in SWEEP_AXES if a != "seed"]]
    masks: dict[str, np.ndarray] = {}
    for _, group in ok.groupby(others, sort=False):
        if len(group) < 2:
            continue
        mask_path = group["mask"].iloc[0]
        if mask_path not in masks:
            with Image.open(mask_path) as m:
                masks[mask_path] = np.asarray(m.convert("L")) > 127
        pixels = [_masked_pixels(p, masks[mask_path]) for p in group["image"]]
        distances = [float(np.abs(a - b).mean()) for a, b in itertools.combinations(pixels, 2)]
        df.loc[group.index, "diversity"] = round(float(np.mean(distances)), 6)
    return df


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


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The metrics this sweep has values for (diversity needs several seeds, clip_score a CLIP checkpoint)."""
    return [m for m in METRICS if m in df and df.loc[df["status"] == "ok", m].notna().any()]


def axis_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread of every metric for each value of each swept axis (axes with one value are left out)."""
    ok, metrics = df[df["status"] == "ok"], metric_columns(df)
    parts = []
    for axis in SWEEP_AXES:
        if ok[axis].nunique() < 2:
            continue
        agg = ok.groupby(axis)[metrics].agg(["mean", "std"])
        agg.columns = [f"{m}_{s}" for m, s in agg.columns]
        agg.insert(0, "images", ok.groupby(axis).size())
        agg = agg.reset_index().rename(columns={axis: "value"})
        agg.insert(0, "axis", axis)
        agg["value"] = agg["value"].map(fmt)
        parts.append(agg)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["axis", "value", "images"])


def write_axis_plots(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """plots/<axis>.csv: mean of each metric per value of guidance, steps and strength (what dvc.yaml plots).

    The plotted metrics are always columns (empty when unmeasured), so `dvc plots show` never misses a field."""
    metrics = list(dict.fromkeys([*PLOT_METRICS, *metric_columns(df)]))
    ok = df[df["status"] == "ok"].reindex(columns=[*PLOT_AXES, *metrics])
    written = []
    for axis in PLOT_AXES:
        table = ok.groupby(axis)[metrics].mean().reset_index() if len(ok) else pd.DataFrame(columns=[axis, *metrics])
        path = out_dir / "plots" / f"{axis}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(path, index=False)
        written.append(path)
    return written


def _finite(series: pd.Series) -> pd.Series:
    return series[series.map(lambda v: isinstance(v, (int, float)) and math.isfinite(v))]


def summary(df: pd.DataFrame) -> dict:
    """The numbers `dvc metrics show` prints: counts and metric means; and the best cell for each metric."""
    ok = df[df["status"] == "ok"]
    out = {
        "cells": int(df["cell_id"].nunique()),
        "images": int(len(df)),
        "ok": int(len(ok)),
        "failed": int((df["status"] == "failed").sum()),
        "mean": {},
    }
    best = {}
    for metric in metric_columns(df):
        values = _finite(ok[metric])
        if not len(values):
            continue
        out["mean"][metric] = round(float(values.mean()), 6)
        row = ok.loc[values.idxmin() if BETTER[metric] == "min" else values.idxmax()]
        best[metric] = {"better": "lower" if BETTER[metric] == "min" else "higher", "cell_id": row["cell_id"],
                        "value": float(row[metric]),
                        **{a: row[a].item() if hasattr(row[a], "item") else row[a] for a in SWEEP_AXES}}
    out["best"] = best
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=_-]+", "_", text).strip("_") or "none"


def _open(path) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        return im


def write_grids(
    df: pd.DataFrame, out_dir: Path, rows: str, cols: str, cell_size: int = 256, max_megapixels: float | None = None
) -> list[dict]:
    """One labelled grid PNG per case and per slice of the axes that are neither rows nor columns, with the case's
    input and mask beside it; and, from the same decoded images, a small JPEG per image under thumbs/ (for the HTML).
    Returns ([{path, title, case, fixed, cells, cell_width, size}], {row index: thumbnail path relative to out_dir})."""
    written, thumbs = [], {}
    fixed_axes = [a for a in SWEEP_AXES if a not in (rows, cols)]
    for case, case_df in df.groupby("case"):
        row_values = sorted(case_df[rows].unique())
        col_values = sorted(case_df[cols].unique())
        first = case_df.iloc[0]
        side = {"input": _open(first["input"]), "mask": _open(first["mask"])}
        for fixed, slice_df in case_df.groupby(fixed_axes, sort=True):
            fixed = dict(zip(fixed_axes, fixed if isinstance(fixed, tuple) else (fixed,)))
            images = {}
            for i, r in slice_df.iterrows():
                images[(r[rows], r[cols])] = _open(r["image"]) if r["status"] == "ok" else "failed"
                if r["status"] == "ok":
                    thumbs[i] = _write_thumb(images[(r[rows], r[cols])], out_dir, f"{r['cell_id']}-seed-{r['seed']}")
            title = f"{case}: " + ", ".join(f"{k} = {fmt(v)}" for k, v in fixed.items())
            try:
                grid = labelled_grid(images, row_values, col_values, rows, cols, title, cell_size, side, max_megapixels)
            except ValueError as e:
                raise ConfigError(f"report.max_megapixels={max_megapixels} is too small: {e}") from e
            name = "__".join([_slug(case)] + [f"{k}={_slug(fmt(v))}" for k, v in fixed.items()])
            path = out_dir / "grids" / f"{name}.png"
            save_image(grid, path)
            written.append({"path": path, "title": title, "case": case, "fixed": fixed,
                            "cells": sum(isinstance(v, Image.Image) for v in images.values()),
                            "cell_width": grid.info["cell_width"], "size": grid.size})
    return written, thumbs


def _write_thumb(image: Image.Image, out_dir: Path, name: str) -> str:
    thumb = image.convert("RGB")
    thumb.thumbnail((THUMB_WIDTH, THUMB_WIDTH * 4))
    (out_dir / "thumbs").mkdir(parents=True, exist_ok=True)
    thumb.save(out_dir / "thumbs" / f"{name}.jpg", quality=85)
    return f"thumbs/{name}.jpg"


def build_report(
    cells_dir: str | Path,
    out_dir: str | Path,
    rows: str,
    cols: str,
    cell_size: int = 256,
    max_megapixels: float | None = 16.0,
    clip=None,
) -> dict:
    """Write runs.csv, by_axis.csv, plots/*.csv, metrics.json (numbers for DVC), best.json, grids/ and thumbs/.

    Returns the summary, with the table (`df`), the grids and the thumbnails for the HTML page and Comet.
    """
    # 1. Start from an empty report folder, so no grid of an earlier sweep lingers.
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for folder in OUTPUT_FOLDERS:  # all exist afterwards, even empty: they are DVC outputs
        shutil.rmtree(out_dir / folder, ignore_errors=True)
        (out_dir / folder).mkdir()

    # 2. A row per image, with the metrics computed across images.
    df = add_diversity(load_records(cells_dir))
    if clip is not None:
        df = add_clip_scores(df, clip)

    # 3. Tables for people (CSV), for DVC metrics and plots, and the best cell per metric.
    df.to_csv(out_dir / "runs.csv", index=False)
    axis_summary(df).to_csv(out_dir / "by_axis.csv", index=False)
    write_axis_plots(df, out_dir)
    result = summary(df)

    # 4. Pictures: labelled grids and thumbnails (each image decoded once).
    grids, thumbs = write_grids(df, out_dir, rows, cols, cell_size, max_megapixels) if len(df) else ([], {})
    result["grids"] = len(grids)
    write_json(result["best"], out_dir / "best.json")
    write_json({k: v for k, v in result.items() if k != "best"}, out_dir / "metrics.json")
    return {**result, "df": df, "grid_files": grids, "thumbs": thumbs,
            "sweep_ids": sorted({str(s) for s in df.get("sweep_id", pd.Series(dtype=str)).dropna()})}


def log_report_to_comet(
    out_dir: str | Path, report: dict, rows: str, cols: str, online: bool, project: str, workspace: str | None
) -> str:
    """Log grids and tables to one Comet experiment tagged with the sweep id(s). Returns its archive path or URL."""
    from . import tracking

    out_dir = Path(out_dir)
    sweeps = report["sweep_ids"]
    params = {"report_rows": rows, "report_cols": cols, "sweep_ids": ",".join(sweeps),
              "cells": report["cells"], "images": report["images"]}
    metrics = {"ok": report["ok"], "failed": report["failed"], **{f"mean_{k}": v for k, v in report["mean"].items()}}
    images = {g["path"].stem: str(g["path"]) for g in report["grid_files"]}
    assets = {name: str(out_dir / name) for name in ("runs.csv", "by_axis.csv", "best.json", "metrics.json")}
    tags = ["report", *(f"sweep:{s}" for s in sweeps)]
    name = "report-" + ("+".join(sweeps) or "empty")
    return tracking.log_cell(out_dir / "comet", online, project, workspace, name, params, metrics, tags, images,
                             assets=assets)
