"""Sweep overhead: the default grid through `stages/generate.py -m` vs the same cells as a bare diffusers loop.

Both run as fresh processes on the same prepared case, from imports to the last image on disk:
- baseline: what a notebook does — load the pipeline once, loop over the grid, one generator per cell, and save each
  cell's picture. `--baseline photo` (the default) saves what the stage's cell holds: the full-size photo with the
  inpainted region pasted back (diffusers' own `image_processor.apply_overlay`, the way its docs keep the unmasked
  area), as PNG at the stage's compression level. `--baseline model` saves only the pipeline's model-size output,
  a loop that does less than the stage (no full-size picture);
- stage: `python stages/generate.py -m` with an empty cell store, so every cell is computed, composited at full size,
  recorded, and logged to Comet (offline archives), exactly as `dvc repro` runs it.
Runs alternate (baseline, stage, baseline, ...) so that drifts in machine speed hit both. Prints one ratio: the median
stage time over the median baseline time; target <= 1.10.
Usage: python bench/sweep_overhead.py [--repeat N] [--baseline photo|model]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BASELINE = r'''
import itertools, json, sys
import numpy as np, torch
from PIL import Image
from diffusers import AutoPipelineForInpainting
from inpaint_sweep.config import load_config
from inpaint_sweep.inpaint import working_size
from inpaint_sweep.grid import grid_values
from inpaint_sweep.tiny_model import ensure_tiny_checkpoint

out = sys.argv[1]
cfg = load_config([f"model.cache_dir={sys.argv[2]}"])
case = json.load(open(f"{cfg.paths.prepare}/cases.json"))[0]
import yaml
grid = grid_values(yaml.safe_load(open("params.yaml"))["hydra"]["sweeper"]["params"], [])
pipe = AutoPipelineForInpainting.from_pretrained(ensure_tiny_checkpoint(cfg.model.cache_dir, cfg.model.seed),
                                                 use_safetensors=True)
pipe.set_progress_bar_config(disable=True)
image = Image.open(case["image"]).convert("RGB")
mask = Image.open(case["mask"])
w, h = working_size(image.size, cfg.model.size)
small, small_mask = image.resize((w, h), Image.Resampling.LANCZOS), mask.resize((w, h), Image.Resampling.NEAREST)
for i, combo in enumerate(itertools.product(*grid.values())):
    s = dict(zip(grid, combo))
    out_image = pipe(prompt=case["prompt"], negative_prompt=s["negative_prompt"] or None, image=small,
                     mask_image=small_mask, height=h, width=w, num_inference_steps=s["steps"],
                     guidance_scale=s["guidance"], strength=s["strength"],
                     generator=torch.Generator("cpu").manual_seed(cfg.seed)).images[0]
    if sys.argv[3] == "photo":  # the cell's picture: the photo, with the inpainted region pasted back at full size
        full_size = out_image.resize(image.size, Image.Resampling.LANCZOS)
        pipe.image_processor.apply_overlay(mask, image, full_size).save(f"{out}/{i}.png", compress_level=1)
    else:
        out_image.save(f"{out}/{i}.png")
print(i + 1)
'''


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{cmd[:3]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return seconds, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="pairs of runs; the ratio of the medians is printed")
    parser.add_argument("--baseline", choices=("photo", "model"), default="photo",
                        help="what the bare loop saves per cell: the full-size photo (as the stage) or the model output")
    args = parser.parse_args()
    python = sys.executable
    subprocess.run([python, "stages/prepare.py"], cwd=REPO, check=True, capture_output=True)
    base_times, stage_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        models = f"{tmp}/models"
        timed([python, "-c", "from inpaint_sweep.tiny_model import ensure_tiny_checkpoint as e; import sys; e(sys.argv[1], 0)", models])
        for r in range(args.repeat):
            Path(f"{tmp}/base{r}").mkdir()
            seconds, out = timed([python, "-c", BASELINE, f"{tmp}/base{r}", models, args.baseline])
            base_times.append(seconds)
            cells = int(out.strip().splitlines()[-1])
            seconds, out = timed([python, "stages/generate.py", "-m", f"paths.generate={tmp}/gen{r}",
                                  f"paths.cell_store={tmp}/store{r}", f"hydra.sweep.dir={tmp}/gen{r}/hydra",
                                  f"model.cache_dir={models}"])
            stage_times.append(seconds)
            made = len(list(Path(f"{tmp}/gen{r}/cells").glob("*/record.json")))
            assert made == cells, (made, cells)
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print(json.dumps({"cells": cells, "baseline": args.baseline, "baseline_s": [round(t, 2) for t in base_times],
                      "stage_s": [round(t, 2) for t in stage_times]}))
    print(f"sweep overhead ratio (stage / bare loop): {median(stage_times) / median(base_times):.3f}")


if __name__ == "__main__":
    main()
