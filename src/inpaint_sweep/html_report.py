"""The report as one HTML page: summary, grids, a sortable table and per-image details.

Self-contained for opening from disk: inline CSS and JavaScript, images by relative path, nothing from a network.
The only link out is an online Comet experiment's URL (an <a>, fetched only if clicked).
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from .config import SWEEP_AXES
from .images import fmt

DETAIL_KEYS = (
    "cell_id", "status", "error", "case", "prompt", *SWEEP_AXES, "model", "model_id", "model_revision", "device",
    "dtype", "working_size", "mask_method", "code_version", "sweep_id", "input", "mask", "image", "finished_at",
)

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: middle; }
th { background: #f2f2f2; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[aria-sort=ascending]::after { content: " \\25B2"; }
table.sortable th[aria-sort=descending]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td { background: #fde8e8; }
figure { margin: 0 0 1.5em; }
figure img { max-width: 100%; border: 1px solid #ddd; }
details { margin: 0.3em 0; }
details table { margin: 0.3em 0 0.8em 1.2em; }
.thumb { height: 64px; }
"""

SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
      var key = function (row) {
        var td = row.cells[col];
        return td.dataset.sort !== undefined ? td.dataset.sort : td.textContent.trim();
      };
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
        if (isNaN(nx) !== isNaN(ny)) return isNaN(nx) ? 1 : -1;  /* blanks last */
        return dir * (!isNaN(nx) ? nx - ny : x.localeCompare(y));
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _cell(value, numeric: bool = False) -> str:
    if _blank(value):
        return '<td class="num" data-sort=""></td>' if numeric else "<td></td>"
    if numeric:
        return f'<td class="num" data-sort="{value}">{escape(f"{value:.4g}")}</td>'
    return f"<td>{escape(fmt(value))}</td>"


def _anchor(row) -> str:
    return f"img-{row['cell_id']}-seed-{row['seed']}"


def _comet(where) -> str:
    if _blank(where) or not where:
        return "(not logged)"
    if str(where).startswith("http"):
        return f'<a href="{escape(str(where))}">{escape(str(where))}</a>'
    return f"offline archive <code>{escape(Path(str(where)).name)}</code> ({escape(str(where))})"


def render(report: dict, metrics: list[str], rows: str, cols: str, comet: str | None) -> str:
    """The HTML text of the page. `report` is what build_report returned; paths are relative to the page."""
    df: pd.DataFrame = report["df"]
    out = ['<!doctype html>\n<html lang="en"><head><meta charset="utf-8">',
           "<title>inpaint-sweep report</title>", f"<style>{STYLE}</style></head><body>",
           "<h1>inpaint-sweep report</h1>"]

    # 1. Summary: counts, sweep, Comet, mean and best per metric.
    out.append('<section id="summary"><h2>Summary</h2><ul>')
    out.append(f"<li>{report['cells']} cell(s), {report['images']} image(s): {report['ok']} ok, "
               f"{report['failed']} failed; {report['grids']} grid(s) of {escape(rows)} (rows) &times; "
               f"{escape(cols)} (columns)</li>")
    out.append(f"<li>sweep: {escape(', '.join(report['sweep_ids']) or '(unknown)')}</li>")
    out.append(f"<li>Comet report experiment: {_comet(comet)}</li></ul>")
    out.append("<table><thead><tr><th>metric</th><th>mean</th><th>best</th><th>better</th><th>best image</th>"
               "</tr></thead><tbody>")
    for m in metrics:
        best = report["best"].get(m)
        if best is None:
            continue
        settings = ", ".join(f"{a} = {fmt(best[a])}" for a in SWEEP_AXES)
        href = f"#img-{best['cell_id']}-seed-{best['seed']}"
        out.append(f"<tr><td>{m}</td>{_cell(report['mean'].get(m), True)}{_cell(best['value'], True)}"
                   f"<td>{best['better']}</td><td><a href=\"{escape(href)}\">{escape(best['cell_id'])}</a> "
                   f"({escape(settings)})</td></tr>")
    out.append("</tbody></table></section>")

    # 2. Grids, with the input and the mask beside each.
    out.append('<section id="grids"><h2>Grids</h2>')
    for g in report["grid_files"]:
        rel = f"grids/{quote(g['path'].name)}"
        out.append(f'<figure><img src="{rel}" alt="{escape(g["title"])}" width="{g["size"][0]}" '
                   f'height="{g["size"][1]}"><figcaption>{escape(g["title"])} ({g["cells"]} cell(s))'
                   "</figcaption></figure>")
    out.append("</section>")

    # 3. A row per image, sortable by any column.
    out.append(f'<section id="runs"><h2>Images ({len(df)})</h2><p>Click a column header to sort.</p>')
    head = ["image", "cell", "status", "case", *SWEEP_AXES, *metrics]
    out.append('<table class="sortable" id="runs-table"><thead><tr>'
               + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr></thead><tbody>")
    for i, r in df.iterrows():
        thumb = report["thumbs"].get(i)
        img = f'<img class="thumb" src="{quote(thumb)}" alt="{escape(_anchor(r))}">' if thumb else ""
        out.append(f'<tr class="{escape(str(r["status"]))}"><td data-sort="{i}">{img}</td>'
                   f'<td><a href="#{escape(_anchor(r))}">{escape(r["cell_id"])}</a></td>'
                   + _cell(r["status"]) + _cell(r["case"])
                   + "".join(_cell(r[a], a in ("steps", "guidance", "strength", "seed")) for a in SWEEP_AXES)
                   + "".join(_cell(r[m], True) for m in metrics) + "</tr>")
    out.append("</tbody></table></section>")

    # 4. Every setting of every image, its provenance, and where its Comet log is.
    out.append('<section id="details"><h2>Image details</h2>')
    for _, r in df.iterrows():
        out.append(f'<details id="{escape(_anchor(r))}"><summary>{escape(r["cell_id"])} seed {r["seed"]} '
                   f'({escape(str(r["status"]))})</summary><table><tbody>')
        for key in DETAIL_KEYS:
            if key in r and not _blank(r[key]):
                out.append(f"<tr><th>{key}</th><td>{escape(fmt(r[key]))}</td></tr>")
        for m in metrics:
            if not _blank(r[m]):
                out.append(f"<tr><th>{m}</th><td>{r[m]:.6g}</td></tr>")
        out.append(f"<tr><th>comet</th><td>{_comet(r.get('comet'))}</td></tr></tbody></table></details>")
    out.append(f"</section><script>{SORT_SCRIPT}</script></body></html>\n")
    return "\n".join(out)


def write_html(path: str | Path, report: dict, metrics: list[str], rows: str, cols: str, comet: str | None) -> Path:
    path = Path(path)
    path.write_text(render(report, metrics, rows, cols, comet), encoding="utf-8")
    return path
