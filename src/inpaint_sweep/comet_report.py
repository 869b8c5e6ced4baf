"""The sweep's summary in Comet: the report experiment, and a saved project view that lines the sweep's cells up.

The report experiment holds the grids (in tracking.image_format), the report page, the tables, the axes and the best
settings as parameters and metrics, and the key (online: the URL) of every cell experiment. The view is a comet_ml
`View` (comet_ml.api_objects.view), created with `comet_ml.API().create_view` when online; offline it is written as
`view-<sweep>.json` beside the report's archive, and `python -m inpaint_sweep.comet_report <file>` creates it once
the archives are uploaded (the report stage prints that command).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from html import escape
from pathlib import Path

from . import tracking
from .grids import fmt
from .images import preview, write_json
from .records import read_records

log = logging.getLogger(__name__)

# The metrics the view charts per axis, when the sweep measured them (docs/metrics.md): quality, change, time.
VIEW_METRICS = ("drift_psnr", "change_inside_mae", "seam", "generation_seconds")
VIEW_IMAGE = "output_seed-0"  # every cell experiment's first output (logbook.py names them output_seed-<seed>)


def cell_experiments(cells_dir: str | Path) -> list[dict]:
    """Every cell of the sweep and its Comet experiment: cell id, case, key, and URL when it was logged online."""
    out = []
    for record in read_records(cells_dir):
        url = record.comet if record.comet and str(record.comet).startswith("http") else None
        out.append({"cell_id": record.cell_id, "case": record.case, "sweep_id": record.sweep_id,
                    "key": record.comet_key or (url.rstrip("/").rsplit("/", 1)[-1] if url else None), "url": url})
    return out


def report_params(report: dict) -> tuple[dict, dict]:
    """(parameters, metrics) of the report experiment: the axes and their values as lists, each metric's best
    setting per axis (`best.<metric>.<axis>`) and value (`best_<metric>`), counts and means."""
    df = report["df"]
    params = {"sweep_ids": report["sweep_ids"], "axes": list(report["axes"]), "report_rows": report["rows"],
              "report_cols": report["cols"], "cells": report["cells"], "images": report["images"]}
    for axis in report["axes"]:
        params[f"axis.{axis}"] = [_plain(v) for v in dict.fromkeys(df[axis].tolist())]
    metrics = {"ok": report["ok"], "failed": report["failed"], **{f"mean_{k}": v for k, v in report["mean"].items()}}
    human = report["human"]  # people's answers (make review)
    metrics.update({"human_answers": human["answers"], "human_raters": human["raters"]})
    if human["agreement_alpha"] is not None:
        metrics["human_agreement_alpha"] = human["agreement_alpha"]
    for metric, best in report["best"].items():
        metrics[f"best_{metric}"] = best["value"]
        params.update({f"best.{metric}.{a}": best[a] for a in report["axes"] if best.get(a) is not None})
        params[f"best.{metric}.cell_id"] = best["cell_id"]
    return {k: v for k, v in params.items() if v is not None}, metrics


def summary_html(report: dict, cells: list[dict]) -> str:
    """The report experiment's HTML tab: the axes, the best setting of each metric, and a link (or key) to every
    cell experiment."""
    out = [f"<h2>Sweep {escape(', '.join(report['sweep_ids']))}</h2>",
           f"<p>{report['cells']} cell(s), {report['images']} image(s), {report['ok']} ok, {report['failed']} failed. "
           f"Axes: {escape(', '.join(report['axes']) or 'none varied')}.</p>",
           "<h3>Best settings</h3><table><tr><th>metric</th><th>value</th><th>cell</th>"
           + "".join(f"<th>{escape(a)}</th>" for a in report["axes"]) + "</tr>"]
    for metric, best in report["best"].items():
        out.append(f"<tr><td>{escape(metric)} ({escape(best['better'])})</td><td>{best['value']:g}</td>"
                   f"<td>{escape(best['cell_id'])}</td>"
                   + "".join(f"<td>{escape(fmt(best.get(a)))}</td>" for a in report["axes"]) + "</tr>")
    out.append("</table><h3>Cell experiments</h3><table><tr><th>cell</th><th>experiment</th></tr>")
    for cell in cells:
        link = (f'<a href="{escape(cell["url"])}" target="_blank">{escape(cell["key"] or cell["url"])}</a>'
                if cell["url"] else escape(cell["key"] or "(not logged)"))
        out.append(f"<tr><td>{escape(cell['cell_id'])}</td><td>{link}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def build_view(sweep_id: str, axes: list[str], metrics: list[str]):
    """The sweep's saved project view: its cells only (tag `sweep:<id>`), an Image panel of their outputs, a
    parallel-coordinates panel of the axes -> metrics, and a bar chart of each metric per axis.

    comet_ml 3.58.8 documents `View` and `API.create_view`, not the layout inside it: the sections and panels are
    in the view's `v3` state as Comet's views reference describes it (sections, each with panels and a grid layout),
    the tag filter in its query state."""
    from comet_ml.api_objects.view import View

    panels = [{"type": "image", "title": "outputs", "images": [VIEW_IMAGE], "groupBy": axes[:1]},
              {"type": "parallel_coordinates", "title": "axes -> metrics", "parameters": list(axes),
               "metrics": list(metrics)}]
    panels += [{"type": "bar", "title": f"{m} by {a}", "x": {"type": "parameter", "name": a},
                "y": {"type": "metric", "name": m, "aggregation": "mean"}} for m in metrics for a in axes]
    # A 12-column grid: the images and the parallel coordinates a row each, then the bar charts two to a row.
    layout = [{"i": str(n), "x": 0, "y": 6 * n, "w": 12, "h": 6} for n in range(2)]
    layout += [{"i": str(n), "x": (n - 2) % 2 * 6, "y": 12 + (n - 2) // 2 * 6, "w": 6, "h": 6}
               for n in range(2, len(panels))]
    query = {"rulesTree": {"condition": "AND", "rules": [
        {"id": "tags", "field": "tags", "type": "string", "operator": "contains", "value": f"sweep:{sweep_id}"}]}}
    return View(name=f"inpaint-sweep {sweep_id}", query_state=json.dumps(query),
                v3={"sections": [{"name": f"sweep {sweep_id}", "panels": panels, "layout": layout}]})


def view_file(view) -> dict:
    """A view as the JSON written offline (and read back by `apply_view`)."""
    return {"name": view.name, "query_state": view.query_state, "v3": view.v3}


def create_view(view, project: str, workspace: str | None) -> str:
    """Create (or update, by name) the view in the project with comet_ml's API; returns its id."""
    import comet_ml

    api = comet_ml.API()
    created = api.create_view(workspace or api.get_default_workspace(), project, view)
    if created is None:
        raise RuntimeError(f"Comet did not save the view {view.name!r}")
    return created.template_id or view.name


def log_report_to_comet(out_dir: str | Path, cells_dir: str | Path, report: dict, page: Path, online: bool,
                        tracking_cfg) -> tuple[str, Path | None]:
    """Log the report experiment, and create the sweep's view (online) or write it beside the archive (offline).
    Returns (the experiment's archive path or URL, the view file written offline or None)."""
    t = tracking_cfg
    out_dir = Path(out_dir)
    sweeps = report["sweep_ids"]
    cells = cell_experiments(cells_dir)
    params, metrics = report_params(report)
    tags = ["kind:report", *(f"report-of:{s}" for s in sweeps)]  # not `sweep:<id>`: a sweep's filter shows cells
    axes = [" × ".join(report["axes"])] if report["axes"] else []
    name = " · ".join(["report", " + ".join(sweeps) or "empty", *axes])
    measured = [m for m in VIEW_METRICS if m in report["mean"] or m == "generation_seconds"]
    views = [build_view(s, report["axes"], measured) for s in sweeps]
    with tempfile.TemporaryDirectory(prefix="comet-report-") as work:
        work = Path(work)
        images = {g["path"].stem: preview(Path(g["path"]), work, t.image_format, None) for g in report["grid_files"]}
        write_json(cells, work / "cell_experiments.json")
        assets = {name: str(out_dir / name) for name in ("runs.csv", "by_axis.csv", "best.json", "metrics.json",
                                                         "ranking.csv")}
        assets.update({f"people-{p.name}": str(p) for p in sorted((out_dir / "plots" / "people").glob("*.svg"))})
        assets.update({"index.html": str(page), "cell_experiments.json": str(work / "cell_experiments.json")})
        where = tracking.log_cell(out_dir / "comet", online, t.project, t.workspace, name, params, metrics, tags,
                                  images, assets=assets, html=summary_html(report, cells),
                                  others={"cell_experiment_keys": ",".join(c["key"] or "" for c in cells)},
                                  git=tracking.git_remote_is_safe(), git_patch=bool(t.git_patch))
    if where.startswith("http"):
        for view in views:
            try:
                create_view(view, t.project, t.workspace)
            except Exception as e:  # noqa: BLE001 - a view is a convenience: the experiments are logged
                log.warning("Comet view %r was not saved (%s: %s)", view.name, type(e).__name__, e)
        return where, None
    written = None
    for sweep, view in zip(sweeps, views):
        written = out_dir / "comet" / f"view-{sweep}.json"
        write_json(view_file(view), written)
    return where, written


def apply_view(path: str | Path, project: str, workspace: str | None) -> str:
    """Create the view written offline (view-<sweep>.json) in the project: after `comet upload` of the archives."""
    from comet_ml.api_objects.view import View

    data = json.loads(Path(path).read_text())
    return create_view(View(name=data["name"], query_state=data.get("query_state"), v3=data.get("v3")), project,
                       workspace)


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def main(argv: list[str] | None = None) -> int:
    """`python -m inpaint_sweep.comet_report VIEW.json... [--project P] [--workspace W]`: save offline-written views
    in Comet (COMET_API_KEY set), after `comet upload` of the sweep's archives."""
    from .config import load_config

    t = load_config().tracking
    parser = argparse.ArgumentParser(prog="python -m inpaint_sweep.comet_report", description=main.__doc__)
    parser.add_argument("views", nargs="+", type=Path)
    parser.add_argument("--project", default=t.project)
    parser.add_argument("--workspace", default=t.workspace)
    args = parser.parse_args(argv)
    if not os.environ.get("COMET_API_KEY"):
        print("error: COMET_API_KEY is not set: a view is saved in your Comet project, which needs your key",
              file=sys.stderr)
        return 2
    os.environ["COMET_LOGGING_CONSOLE"] = "CRITICAL"  # read when comet_ml is imported: the line below says what failed
    for path in args.views:
        try:
            view_id = apply_view(path, args.project, args.workspace)
        except Exception as e:  # noqa: BLE001 - comet_ml raises its own types and requests'; each is one line here
            print(f"error: Comet view {path} was not saved: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        print(f"Comet view saved: {path.name} -> project {args.project} ({view_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
