"""Report stage at scale: peak memory and time per cell at 24 and 384 cells, and a projection for 10,000.

The cells are synthetic, written directly (making 384 real ones on 2 CPU cores takes minutes and measures generate,
not the report): `stages/prepare.py` makes the default case's mask from the sample photo (810 x 1080), then each cell
is a record in generate's format (with the `config` field) and one full-size PNG (PNG level 1, as generate writes):
the photo with the mask's box filled by 64-pixel noise upscaled (what the tiny model at `model.size=64` paints),
pasted through the hard mask. 24 cells = the default grid (3 guidance x 2 strength x 2 steps x 2 negative prompts);
384 = 8 x 4 x 3 x 2 x 2 model.scheduler; 1536 = the same
grid pages, four times as many (4 negative prompts x 4 schedulers). Each report runs as `python stages/report.py` (defaults: Comet offline
archive, 256-pixel cells) under `/usr/bin/time -v`.

    python bench/report_scale.py [--cells 24,384,1536] [--keep DIR]

Prints peak RSS, wall and CPU time per run, then time per cell beyond start-up between 24 and 384 cells (wall, and
CPU: on a shared machine the CPU figure is the steadier one), the memory ratio 384 vs 24 (target <= 1.5), and the
projection to 10,000 cells (time; memory from the growth between the two largest runs, whose grid pages are the same
size; page weight of index.html and its first page of thumbnails).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from inpaint_sweep.images import save_image, write_json  # noqa: E402

GRIDS = {
    24: {"guidance": [5.0, 7.5, 12.0], "strength": [0.75, 1.0], "steps": [4, 8], "negative_prompt": ["", "cartoon"],
         "model.scheduler": [None]},
    384: {"guidance": [3.0, 4.0, 5.0, 6.0, 7.5, 9.0, 12.0, 15.0], "strength": [0.4, 0.6, 0.8, 1.0],
          "steps": [4, 8, 16], "negative_prompt": ["", "cartoon"], "model.scheduler": ["euler_a", "dpmpp_2m"]},
    # Same grid pages (8 guidance x 4 strength) as 384, four times as many: the memory that grows with the cells.
    1536: {"guidance": [3.0, 4.0, 5.0, 6.0, 7.5, 9.0, 12.0, 15.0], "strength": [0.4, 0.6, 0.8, 1.0],
           "steps": [4, 8, 16], "negative_prompt": ["", "cartoon", "blurry", "low quality"],
           "model.scheduler": ["euler_a", "dpmpp_2m", "ddim", "unipc"]},
}


def make_cells(root: Path, grid: dict, case: dict) -> int:
    """Write one synthetic cell per grid point under root/cells (records + full-size PNGs)."""
    photo = np.asarray(Image.open(case["image"]).convert("RGB"))
    mask = np.asarray(Image.open(case["mask"]).convert("L")) > 127
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    rng = np.random.default_rng(0)
    keys = list(grid)
    n = 0
    for values in itertools.product(*grid.values()):
        settings = dict(zip(keys, values))
        cid = f"{case['id']}-{n:012x}"
        noise = Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).resize((x1 - x0, y1 - y0))
        out = photo.copy()
        region = out[y0:y1, x0:x1]
        region[mask[y0:y1, x0:x1]] = np.asarray(noise)[mask[y0:y1, x0:x1]]
        path = root / "cells" / cid / "seed-0.png"
        save_image(Image.fromarray(out), path, compress_level=1)
        config = {"steps": settings["steps"], "guidance": settings["guidance"], "strength": settings["strength"],
                  "negative_prompt": settings["negative_prompt"], "seed": 0, "prompt": None, "model.name": "tiny",
                  "model.size": 64, "model.scheduler": settings["model.scheduler"], "mask.dilate": 8}
        write_json({
            "cell_id": cid, "status": "ok", "error": None, "case": case["id"], "prompt": case["prompt"],
            "steps": config["steps"], "guidance": config["guidance"], "strength": config["strength"],
            "negative_prompt": config["negative_prompt"], "seed": 0, "model": "tiny",
            "model_id": "builtin/tiny-sd-inpaint", "model_revision": "v2-seed0", "device": "cpu", "dtype": "float32",
            "scheduler": config["model.scheduler"], "padding_mask_crop": None, "working_size": [48, 64],
            "mask_method": "box", "code_version": "bench", "sweep_id": "bench", "input": case["image"],
            "mask": case["mask"], "soft_mask": case.get("soft_mask"), "config": config,
            "images": [{"seed": 0, "path": str(path), "nsfw": False, "metrics": {
                "seconds": 0.05, "peak_memory_mb": 900.0, "drift_mae": 0.2, "drift_psnr": 12.0,
                "change_inside_mae": 0.3}}],
            "comet": None, "finished_at": "2026-11-26T00:00:00+0000"}, root / "cells" / cid / "record.json")
        n += 1
    return n


def timed_report(gen: Path, out: Path) -> dict:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env = {k: v for k, v in env.items() if not k.startswith("COMET_API")}
    cmd = ["/usr/bin/time", "-v", sys.executable, "stages/report.py", f"paths.generate={gen}", f"paths.report={out}"]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"report failed:\n{result.stdout}{result.stderr}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1)) / 1024
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", result.stderr).group(1)
    seconds = sum(float(p) * 60**k for k, p in enumerate(reversed(wall.split(":"))))
    cpu = sum(float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", result.stderr).group(1))
              for kind in ("User", "System"))
    thumbs = sorted((out / "thumbs").glob("*-seed-0.jpg"))
    return {"rss_mb": rss, "seconds": seconds, "cpu": cpu, "html_bytes": (out / "index.html").stat().st_size,
            "thumb_bytes": int(np.mean([t.stat().st_size for t in thumbs])) if thumbs else 0,
            "grids": len(list((out / "grids").glob("*.png"))), "summary": result.stdout.strip().splitlines()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", default="24,384,1536", help="comma-separated sizes, from: 24, 384, 1536")
    parser.add_argument("--keep", help="write the cells and reports here and keep them (default: a temporary folder)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.cells.split(",")]
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="report-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        # 1. The default case's photo and mask, from the real prepare stage.
        prepared = root / "prepared"
        subprocess.run([sys.executable, "stages/prepare.py", f"paths.prepare={prepared}"], cwd=REPO, check=True,
                       capture_output=True)
        case = json.loads((prepared / "cases.json").read_text())[0]
        # 2. Cells, then the report under /usr/bin/time -v.
        runs = {}
        for size in sizes:
            gen = root / f"gen-{size}"
            shutil.rmtree(gen, ignore_errors=True)
            assert make_cells(gen, GRIDS[size], case) == size
            runs[size] = timed_report(gen, root / f"report-{size}")
            r = runs[size]
            print(f"{size:>6} cells: peak RSS {r['rss_mb']:.0f} MB, wall {r['seconds']:.2f} s, CPU {r['cpu']:.2f} s, "
                  f"{r['grids']} grid(s), "
                  f"index.html {r['html_bytes'] / 1e3:.0f} kB  | {r['summary']}")
        # 3. Per cell beyond start-up, and the projection.
        if len(runs) >= 2:
            sizes = sorted(runs)
            small, mid, big = sizes[0], sizes[1], sizes[-1]
            a, b, c = runs[small], runs[mid], runs[big]
            per_cell = (b["seconds"] - a["seconds"]) / (mid - small)
            cpu_per_cell = (b["cpu"] - a["cpu"]) / (mid - small)
            print(f"time per cell beyond start-up ({small} -> {mid}): {per_cell * 1e3:.1f} ms wall (target <= 20), "
                  f"{cpu_per_cell * 1e3:.1f} ms CPU (user + system, all threads); load average now "
                  f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
            print(f"peak memory {mid} vs {small} cells: {b['rss_mb'] / a['rss_mb']:.2f}x (target <= 1.5x)")
            n = 10_000
            slope = (c["rss_mb"] - b["rss_mb"]) / (big - mid) if big > mid else (b["rss_mb"] - a["rss_mb"]) / (mid - small)
            html_per_cell = (c["html_bytes"] - a["html_bytes"]) / (big - small)
            print(f"memory growth {mid} -> {big} cells: {slope * 1e3:.1f} kB a cell")
            print(f"projection for {n} cells: {c['seconds'] + per_cell * (n - big):.0f} s wall, peak RSS "
                  f"{c['rss_mb'] + slope * (n - big):.0f} MB, index.html "
                  f"{(a['html_bytes'] + html_per_cell * (n - small)) / 1e6:.1f} MB + first table page of 100 "
                  f"thumbnails {100 * c['thumb_bytes'] / 1e6:.2f} MB (grids load lazily as they scroll into view)")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
