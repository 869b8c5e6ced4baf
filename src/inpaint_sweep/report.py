"""report: every cell record -> runs.csv, per-axis aggregates, a DVC metrics file and labelled grids."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
from PIL import Image

from .cells import RECORD
from .config import SWEEP_AXES
from .images import fmt, labelled_grid, save_image, write_json

METRICS = ("seconds", "drift_mae", "drift_psnr", "change_inside_mae")


def load_records(cells_dir: str | Path) -> pd.DataFrame:
    """One row per generated image, one column per axis, setting and metric."""
    rows = []
    for path in sorted(Path(cells_dir).glob(f"*/{RECORD}")):
        record = json.loads(path.read_text())
        metrics = record.pop("metrics", {}) or {}
        record.pop("traceback", None)
        record["working_size"] = "x".join(map(str, record.get("working_size") or []))
        rows.append({**record, **{m: metrics.get(m) for m in METRICS}})
    columns = ["cell_id", "status", "case", *SWEEP_AXES]
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=columns + list(METRICS))
    rest = [c for c in df.columns if c not in columns]
    return df[columns + rest].sort_values(["case", *SWEEP_AXES]).reset_index(drop=True)


def axis_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread of every metric for each value of each swept axis (axes with one value are left out)."""
    ok = df[df["status"] == "ok"]
    parts = []
    for axis in SWEEP_AXES:
        if ok[axis].nunique() < 2:
            continue
        agg = ok.groupby(axis)[list(METRICS)].agg(["mean", "std"])
        agg.columns = [f"{m}_{s}" for m, s in agg.columns]
        agg.insert(0, "cells", ok.groupby(axis).size())
        agg = agg.reset_index().rename(columns={axis: "value"})
        agg.insert(0, "axis", axis)
        agg["value"] = agg["value"].map(fmt)
        parts.append(agg)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["axis", "value", "cells"])


def summary(df: pd.DataFrame) -> dict:
    """The numbers `dvc metrics show` prints: counts, metric means, and the best cell for each metric."""
    ok = df[df["status"] == "ok"]
    out = {
        "cells": int(len(df)),
        "ok": int(len(ok)),
        "failed": int((df["status"] == "failed").sum()),
        "mean": {m: round(float(ok[m].mean()), 6) for m in METRICS if len(ok)},
    }
    # Less time and less drift outside the mask are better; more change inside is what inpainting is for.
    best_by = {"seconds": "min", "drift_mae": "min", "drift_psnr": "max", "change_inside_mae": "max"}
    best = {}
    for metric, how in best_by.items():
        finite = ok[ok[metric].abs() != float("inf")] if len(ok) else ok
        if len(finite):
            row = finite.loc[finite[metric].idxmin() if how == "min" else finite[metric].idxmax()]
            best[metric] = {"cell_id": row["cell_id"], "value": float(row[metric]),
                            **{a: row[a].item() if hasattr(row[a], "item") else row[a] for a in SWEEP_AXES}}
    out["best"] = best
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=_-]+", "_", text).strip("_") or "none"


def write_grids(df: pd.DataFrame, out_dir: Path, rows: str, cols: str, cell_size: int = 192) -> list[Path]:
    """One labelled grid PNG per case and per slice of the axes that are neither rows nor columns."""
    written = []
    fixed_axes = [a for a in SWEEP_AXES if a not in (rows, cols)]
    for case, case_df in df.groupby("case"):
        row_values = sorted(case_df[rows].unique())
        col_values = sorted(case_df[cols].unique())
        for fixed, slice_df in case_df.groupby(fixed_axes, sort=True):
            fixed = dict(zip(fixed_axes, fixed if isinstance(fixed, tuple) else (fixed,)))
            images = {}
            for _, r in slice_df.iterrows():
                ok = r["status"] == "ok" and r.get("image") and Path(r["image"]).is_file()
                images[(r[rows], r[cols])] = Image.open(r["image"]) if ok else None
            fixed_text = ", ".join(f"{k} = {fmt(v)}" for k, v in fixed.items())
            grid = labelled_grid(images, row_values, col_values, rows, cols, f"{case}: {fixed_text}", cell_size)
            name = "__".join([_slug(case)] + [f"{k}={_slug(fmt(v))}" for k, v in fixed.items()])
            path = out_dir / "grids" / f"{name}.png"
            save_image(grid, path)
            written.append(path)
    return written


def build_report(cells_dir: str | Path, out_dir: str | Path, rows: str, cols: str) -> dict:
    """Write runs.csv, by_axis.csv, metrics.json (numbers for DVC), best.json and grids/ under out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = load_records(cells_dir)
    df.to_csv(out_dir / "runs.csv", index=False)
    axis_summary(df).to_csv(out_dir / "by_axis.csv", index=False)
    result = summary(df)
    result["grids"] = len(write_grids(df, out_dir, rows, cols)) if len(df) else 0
    write_json(result.pop("best"), out_dir / "best.json")
    write_json(result, out_dir / "metrics.json")
    return result
