"""Stage 3, report: cell records -> runs.csv, by_axis.csv, plots/, metrics.json, labelled grids, index.html, and one
Comet report experiment.

    python stages/report.py [report.rows=steps report.cols=model.scheduler report.max_megapixels=4 ...]
"""

import sys
from pathlib import Path

from inpaint_sweep import cli, tracking
from inpaint_sweep.config import load_config
from inpaint_sweep.validate import check_report_config
from inpaint_sweep.html_report import write_html
from inpaint_sweep.comet_report import log_report_to_comet
from inpaint_sweep.report import build_report, metric_columns


@cli.one_line_errors
def main(overrides: list[str]) -> None:
    cfg = load_config(overrides)
    r, t = cfg.report, cfg.tracking
    check_report_config(r)
    clip = None
    if r.clip_model:
        from inpaint_sweep.clip_score import load_clip

        clip = load_clip(r.clip_model)
    out = Path(cfg.paths.report)
    report = build_report(Path(cfg.paths.generate) / "cells", out, rows=r.rows, cols=r.cols, cell_size=r.cell_size,
                          max_megapixels=r.max_megapixels, clip=clip, ratings_dir=cfg.paths.ratings)
    rows, cols = report["rows"], report["cols"]  # null in the config: chosen among the axes that varied
    metrics = metric_columns(report["df"])
    comet = view = None
    if t.comet and len(report["df"]):
        page = write_html(out / "index.html", report, metrics, rows, cols, None)  # the page Comet gets
        comet, view = log_report_to_comet(out, Path(cfg.paths.generate) / "cells", report, page,
                                          tracking.is_online(t.offline), t)
    write_html(out / "index.html", report, metrics, rows, cols, comet)
    print(
        f"report: {report['cells']} cell(s), {report['images']} image(s), {report['ok']} ok, {report['failed']} "
        f"failed, {report['grids']} grid(s) of {rows or '-'} x {cols or '-'} over {len(report['axes'])} axis(es) "
        f"({', '.join(report['axes']) or 'none varied'}) -> {out}/index.html"
    )
    h = report["human"]
    print(f"people's choice: {h['answers']} answer(s) by {h['raters']} rater(s) about {h['rated_images']} image(s)"
          + (f"; {h['ignored_answers']} about images not in this view" if h["ignored_answers"] else "")
          + ("" if h["answers"] else f" (give some: make review; the ledger is {cfg.paths.ratings})"))
    if comet:
        upload = "" if comet.startswith("http") else f"  (upload: comet upload {comet})"
        print(f"Comet report experiment: {comet}{upload}")
    if view:  # offline: the sweep's view is saved once its experiments are uploaded
        print(f"Comet view of the sweep, after uploading: python -m inpaint_sweep.comet_report {view}")


if __name__ == "__main__":
    if cli.help_requested(sys.argv[1:]):
        cli.print_help("report", sys.argv[1:])
    else:
        main(sys.argv[1:])
