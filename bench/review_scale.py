"""Review app at sweep scale: how long `python stages/review.py` takes to open a 10,000-cell view (target <= 3 s),
and how long the server takes to choose the next pair there.

The cells are synthetic, written as bench/report_scale.py writes them (its make_cells: a record in generate's format
and one PNG per cell), from the default case's photo and mask shrunk to 96 pixels wide, so that 10,000 PNGs take
seconds to write and little disk (the app reads a picture only when it shows it). Grid: 10 guidance x 10 strength x
5 steps x 4 negative prompts x 5 schedulers = 10,000 cells.

    python bench/review_scale.py [--keep DIR]

Prints: the time from starting the process to its printed URL and to the first pair served over HTTP; then, in
process, the time to read the view, and the time to choose a pair (median and 90th percentile over 200 pairs,
each answered in between, so the ranking is refitted each time); and the report's cost of ranking (Bradley-Terry
with 200 bootstrap resamples) for 300 answers over 100 images and 1,000 answers over 500 images.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from report_scale import make_cells  # noqa: E402

GRID = {"guidance": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.5, 9.0, 12.0, 15.0],
        "strength": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], "steps": [4, 8, 16, 32, 50],
        "negative_prompt": ["", "cartoon", "blurry", "low quality"],
        "model.scheduler": ["euler_a", "dpmpp_2m", "ddim", "unipc", "pndm"]}
PAIRS = 200


def small_case(prepared: Path, width: int = 96) -> dict:
    """The default case, its photo and mask shrunk to `width` pixels wide."""
    case = json.loads((prepared / "cases.json").read_text())[0]
    for key in ("image", "mask"):
        with Image.open(case[key]) as im:
            small = im.resize((width, round(im.height * width / im.width)))
            path = prepared / f"small-{key}.png"
            small.save(path)
            case[key] = str(path)
    return case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", help="write the cells here and keep them (default: a temporary folder)")
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="review-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        # 1. The default case from the real prepare stage, shrunk; 10,000 cells.
        prepared = root / "prepared"
        subprocess.run([sys.executable, "stages/prepare.py", f"paths.prepare={prepared}"], cwd=REPO, check=True,
                       capture_output=True)
        gen = root / "gen"
        if not (gen / "cells").is_dir():
            t = time.perf_counter()
            n = make_cells(gen, GRID, small_case(prepared))
            print(f"wrote {n} synthetic cells in {time.perf_counter() - t:.1f} s")
        # 2. The stage, as `make review` starts it: time to its URL, and to the first pair over HTTP.
        ratings_dir = root / "ratings"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        prepare_cpu = before.ru_utime + before.ru_stime
        shutil.rmtree(ratings_dir, ignore_errors=True)
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "stages/review.py", f"paths.generate={gen}",
                                 f"paths.ratings={ratings_dir}"], cwd=REPO, stdout=subprocess.PIPE, text=True)
        try:
            lines = []
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("open "):
                    break
            printed = time.perf_counter() - start
            url = lines[-1].split()[1]
            with urllib.request.urlopen(url + "api/pair?rater=bench", timeout=60) as r:
                pair = json.loads(r.read())
            with urllib.request.urlopen(url + pair["pair"]["left"]["thumb"], timeout=60) as r:
                r.read()
            first = time.perf_counter() - start
        finally:
            proc.terminate()
            proc.wait(10)
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = used.ru_utime + used.ru_stime - prepare_cpu  # the app's CPU time (it idles after the first pair)
        print(lines[0].strip())
        print(f"open a {pair['images']}-image view: {printed:.2f} s from start to the printed URL, {first:.2f} s to "
              f"the first pair and its first picture served (target <= 3 s); the app's CPU time {cpu:.2f} s; load "
              f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        # 3. In process: reading the view, and choosing pairs while answers come in.
        from inpaint_sweep import ratings
        from inpaint_sweep.review import Review, open_view

        t = time.perf_counter()
        view = open_view(gen / "cells")
        read = time.perf_counter() - t
        review = Review(view, ratings_dir, 768, seed=0)
        times = []
        for _ in range(PAIRS):
            t = time.perf_counter()
            pair = review.next_pair("bench")
            times.append(time.perf_counter() - t)
            left, right = pair["left"], pair["right"]
            review.answer("bench", pair["case"], (left["cell_id"], left["seed"]), (right["cell_id"], right["seed"]),
                          "left")
        print(f"in process: read the view in {read:.2f} s; choose a pair: median {np.median(times) * 1e3:.1f} ms, "
              f"90th percentile {np.percentile(times, 90) * 1e3:.1f} ms over {PAIRS} pairs "
              f"({len(ratings.read_answers(ratings_dir)[0])} answers by then)")
        # 4. The report's ranking (ratings.rank) of synthetic answers: its cost grows with the rated images.
        rng = np.random.default_rng(0)
        for n_images, n_answers in ((100, 300), (500, 1000)):
            images = [(f"cell-{k}", 0) for k in range(n_images)]
            answers = []
            for _ in range(n_answers):
                a, b = rng.choice(n_images, 2, replace=False)
                answers.append(ratings.Answer("bench", "t", "case", images[a], images[b], "left" if a > b else "right"))
            t = time.perf_counter()
            ratings.rank(answers, set(images))
            print(f"report's ranking of {n_answers} answers over {n_images} images: {time.perf_counter() - t:.1f} s "
                  f"({ratings.BOOTSTRAP} bootstrap resamples)")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
