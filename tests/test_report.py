"""report: runs.csv has a row per image, metrics for DVC, one labelled grid per slice, failed cells marked."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from inpaint_sweep.images import labelled_grid, save_image, write_json
from inpaint_sweep.report import build_report

from conftest import run


def fake_cells(root, guidance=(5.0, 7.5, 12.0), strength=(0.75, 1.0), steps=(4, 8), failed=()):
    rng = np.random.default_rng(0)
    n = 0
    for g in guidance:
        for s in strength:
            for st in steps:
                cid = f"case-{n:03d}"
                n += 1
                status = "failed" if (g, s, st) in failed else "ok"
                image = root / cid / "image.png"
                if status == "ok":
                    save_image(Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)), image)
                write_json({"cell_id": cid, "status": status, "error": None if status == "ok" else "RuntimeError: boom",
                            "case": "case", "prompt": "p", "steps": st, "guidance": g, "strength": s,
                            "negative_prompt": "", "seed": 0, "working_size": [24, 32],
                            "image": str(image) if status == "ok" else None,
                            "metrics": {"seconds": 0.1 * n, "drift_mae": 0.01 * n, "drift_psnr": 30.0 - n,
                                        "change_inside_mae": 0.2} if status == "ok" else {}},
                           root / cid / "record.json")
    return n


def test_report_tables_metrics_and_grids(tmp_path):
    n = fake_cells(tmp_path / "cells", failed={(7.5, 1.0, 8)})
    summary = build_report(tmp_path / "cells", tmp_path / "report", "guidance", "strength")
    runs = pd.read_csv(tmp_path / "report" / "runs.csv")
    assert len(runs) == n == 12
    assert {"guidance", "strength", "steps", "negative_prompt", "seed", "drift_psnr", "seconds"} <= set(runs.columns)
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["cells"] == 12 and metrics["ok"] == 11 and metrics["failed"] == 1
    assert metrics["grids"] == 2 and summary["grids"] == 2  # one per value of steps (the axis left over)
    best = json.loads((tmp_path / "report" / "best.json").read_text())
    assert best["seconds"]["cell_id"] == "case-000" and best["drift_psnr"]["cell_id"] == "case-000"
    by_axis = pd.read_csv(tmp_path / "report" / "by_axis.csv")
    assert set(by_axis["axis"]) == {"guidance", "strength", "steps"}
    assert by_axis[by_axis["axis"] == "guidance"]["cells"].tolist() == [4, 3, 4]
    grids = sorted((tmp_path / "report" / "grids").glob("*.png"))
    assert [g.name for g in grids] == ["case__steps=4__negative_prompt=none__seed=0.png",
                                       "case__steps=8__negative_prompt=none__seed=0.png"]


def _ink(region: Image.Image) -> int:
    return int((np.asarray(region.convert("L")) < 128).sum())


def test_grid_has_labels_on_the_margins_and_marks_missing_cells():
    cell = Image.new("RGB", (30, 40), (0, 128, 0))
    cells = {(r, c): cell for r in (5, 7.5, 12) for c in (0.75, 1.0)}
    cells[(7.5, 1.0)] = None
    grid = labelled_grid(cells, [5, 7.5, 12], [0.75, 1.0], "guidance", "strength", "title", cell_size=90)
    arr = np.asarray(grid)
    green = (arr[:, :, 0] == 0) & (arr[:, :, 1] == 128) & (arr[:, :, 2] == 0)
    assert green.sum() == 5 * 90 * 120  # five real cells at 90x120 (aspect kept)
    rows, cols = np.nonzero(green)
    left, top = cols.min(), rows.min()
    # Text in the left margin beside each row and above each column.
    for i in range(3):
        assert _ink(grid.crop((0, top + i * 124, left, top + i * 124 + 120))) > 30
    assert _ink(grid.crop((left, top - 30, grid.width, top))) > 60
    # The label text depends on the values: another axis name draws other pixels.
    other = labelled_grid(cells, [5, 7.5, 12], [0.75, 1.0], "steps", "strength", "title", cell_size=90)
    assert np.asarray(other.crop((0, top, left, grid.height))).tobytes() != arr[top:, :left].tobytes()
    # The missing cell is a marked blank: red marks where the image would be.
    x, y = left + 1 * 94, top + 1 * 124
    blank = arr[y:y + 120, x:x + 90]
    assert ((blank[:, :, 0] > 150) & (blank[:, :, 1] < 60)).sum() > 100


def test_report_stage_rejects_a_bad_axis(tmp_path):
    result = run(["python", "stages/report.py", "report.rows=colour"], check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: report.rows='colour' is not an axis; choose one of steps, guidance, strength, negative_prompt, seed"
