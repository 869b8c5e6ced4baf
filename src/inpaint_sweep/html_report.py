"""The report as one HTML page: summary, best settings, charts, grids, a sortable paged table and per-image details.

Self-contained for opening from disk: inline CSS, SVG and JavaScript, images by relative path, nothing from a network.
The only link out is an online Comet experiment's URL (an <a>, fetched only if clicked). The table's rows travel as
JSON and are drawn a page (PAGE_ROWS) at a time, with lazily loaded thumbnails, so 10,000 images stay usable.
"""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from .charts import axis_chart
from .grids import fmt, short
from .report import PROVENANCE, _goodness, value_order

PAGE_ROWS = 100
DETAIL_KEYS = ("cell_id", "status", "error", "case", "prompt", "seed", "image", *PROVENANCE)

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
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
.charts { display: flex; flex-wrap: wrap; gap: 8px; margin-bottom: 1em; }
.chart { border: 1px solid #ddd; background: white; }
.tw { position: relative; display: inline-block; line-height: 0; }
.tw img.thumb { height: 64px; }
.tw img.outline { position: absolute; left: 0; top: 0; height: 100%; display: none; pointer-events: none; }
.tw.show-mask img.outline { display: block; }
button.tg { font-size: 11px; padding: 0 4px; margin-left: 2px; vertical-align: top; }
button.tg[aria-pressed=true] { background: #333; color: white; }
.pager button { margin: 0 4px; }
#detail table { margin-left: 0; }
"""

SCRIPT = r"""
var DATA = JSON.parse(document.getElementById("runs-data").textContent);
var PAGE = DATA.page, page = 0, global = {diff: false, mask: false};
var table = document.getElementById("runs-table"), body = table.tBodies[0];

function esc(s) { return String(s).replace(/[&<>"]/g, function (c) { return "&#" + c.charCodeAt(0) + ";"; }); }
function fmtNum(v) { return Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(3) : +v.toPrecision(4) + ""; }
function thumbHtml(r) {
  if (!r.t) return "";
  var cls = "tw" + (global.mask ? " show-mask" : ""), src = global.diff && r.f ? r.f : r.t;
  var h = '<span class="' + cls + '"><img class="thumb" loading="lazy" src="' + esc(src) + '" data-out="' + esc(r.t) +
          '" data-diff="' + esc(r.f || r.t) + '" alt="' + esc(r.id) + '">';
  if (r.o) h += '<img class="outline" loading="lazy" src="' + esc(r.o) + '" alt="">';
  h += "</span>";
  if (r.f) h += '<button class="tg" data-k="diff" aria-pressed="' + global.diff + '" title="difference from the photo">&Delta;</button>';
  if (r.o) h += '<button class="tg" data-k="mask" aria-pressed="' + global.mask + '" title="mask outline">&#9711;</button>';
  return h;
}
function rowHtml(r) {
  var h = '<tr class="' + esc(r.s) + '"><td data-sort="' + r.i + '">' + thumbHtml(r) + "</td>" +
          '<td><a href="#' + esc(r.id) + '">' + esc(r.c) + "</a></td>";
  r.v.forEach(function (v, k) {
    if (v === null) h += DATA.numeric[k] ? '<td class="num" data-sort=""></td>' : "<td></td>";
    else if (DATA.numeric[k] && typeof v === "number") h += '<td class="num" data-sort="' + v + '">' + fmtNum(v) + "</td>";
    else h += '<td title="' + esc(v) + '">' + esc(String(v).length > 40 ? String(v).slice(0, 37) + "..." : v) + "</td>";
  });
  return h + "</tr>";
}
function render() {
  var rows = DATA.rows.slice(page * PAGE, (page + 1) * PAGE);
  body.innerHTML = rows.map(rowHtml).join("");
  var pages = Math.max(1, Math.ceil(DATA.rows.length / PAGE));
  document.querySelectorAll(".pager span").forEach(function (s) {
    s.textContent = "page " + (page + 1) + " of " + pages + " (" + DATA.rows.length + " images)";
  });
}
document.querySelectorAll(".pager button").forEach(function (b) {
  b.addEventListener("click", function () {
    var pages = Math.max(1, Math.ceil(DATA.rows.length / PAGE));
    page = Math.min(pages - 1, Math.max(0, page + (+b.dataset.step)));
    render();
  });
});
table.querySelectorAll("th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    var key = function (r) { return col === 0 ? r.i : col === 1 ? r.c : r.v[col - 2]; };
    DATA.rows.sort(function (a, b) {
      var x = key(a), y = key(b), nx = typeof x === "number", ny = typeof y === "number";
      if ((x === null) !== (y === null)) return x === null ? 1 : -1;  /* blanks last */
      if (nx && ny) return dir * (x - y);
      if (nx !== ny) return nx ? -1 : 1;
      return dir * String(x).localeCompare(String(y));
    });
    page = 0; render();
  });
});
function toggle(span, button, k, on) {
  var img = span.querySelector("img.thumb");
  if (k === "diff") img.src = on ? img.dataset.diff : img.dataset.out;
  else span.classList.toggle("show-mask", on);
  if (button) button.setAttribute("aria-pressed", on);
}
document.addEventListener("click", function (e) {
  var b = e.target.closest("button.tg");
  if (!b) return;
  toggle(b.parentNode.querySelector(".tw"), b, b.dataset.k, b.getAttribute("aria-pressed") !== "true");
});
document.querySelectorAll("input.global").forEach(function (box) {
  box.addEventListener("change", function () {
    global[box.dataset.k] = box.checked;
    document.querySelectorAll("button.tg[data-k=" + box.dataset.k + "]").forEach(function (b) {
      toggle(b.parentNode.querySelector(".tw"), b, b.dataset.k, box.checked);
    });
  });
});
function showDetail() {
  var id = location.hash.slice(1), r = DATA.rows.filter(function (x) { return x.id === id; })[0];
  var box = document.getElementById("detail");
  if (!r) { box.innerHTML = "<p>Click an image's cell id in the table to see all its settings here.</p>"; return; }
  var h = "<h3>" + esc(r.c) + " seed " + esc(r.d.seed) + " (" + esc(r.s) + ")</h3>" + thumbHtml(r) + "<table><tbody>";
  DATA.columns.forEach(function (c, k) { if (r.v[k] !== null) h += "<tr><th>" + esc(c) + "</th><td>" + esc(r.v[k]) + "</td></tr>"; });
  Object.keys(r.d).forEach(function (k) { h += "<tr><th>" + esc(k) + "</th><td>" + esc(r.d[k]) + "</td></tr>"; });
  box.innerHTML = h + "</tbody></table>";
}
window.addEventListener("hashchange", showDetail);
render(); showDetail();
"""


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _json_value(value):
    if _blank(value):
        return None
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _num(value) -> str:
    return "" if _blank(value) else escape(f"{value:.4g}")


def _anchor(cell_id, seed) -> str:
    return f"img-{cell_id}-seed-{seed}"


def _comet(where) -> str:
    if _blank(where) or not where:
        return "(not logged)"
    if str(where).startswith("http"):
        return f'<a href="{escape(str(where))}">{escape(str(where))}</a>'
    return f"offline archive <code>{escape(Path(str(where)).name)}</code> ({escape(str(where))})"


def _thumb_html(thumb: dict | None, alt: str) -> str:
    """A thumbnail with its difference-heatmap and mask-outline toggles (the same markup the table's script draws)."""
    if not thumb:
        return ""
    out = (f'<span class="tw"><img class="thumb" loading="lazy" src="{quote(thumb["thumb"])}" '
           f'data-out="{quote(thumb["thumb"])}" data-diff="{quote(thumb.get("diff", thumb["thumb"]))}" '
           f'alt="{escape(alt)}">')
    if thumb.get("outline"):
        out += f'<img class="outline" loading="lazy" src="{quote(thumb["outline"])}" alt="">'
    out += "</span>"
    if thumb.get("diff"):
        out += '<button class="tg" data-k="diff" aria-pressed="false" title="difference from the photo">&Delta;</button>'
    if thumb.get("outline"):
        out += '<button class="tg" data-k="mask" aria-pressed="false" title="mask outline">&#9711;</button>'
    return out


def _table_data(report: dict, metrics: list[str]) -> dict:
    """The table's rows as JSON: per image its thumbnails, the varied settings and metrics, and the details that are
    not the same for every image (those are in the summary once)."""
    df: pd.DataFrame = report["df"]
    axes = report["axes"]
    nsfw = ["nsfw"] if "nsfw" in df and df["nsfw"].map(lambda v: v is True).any() else []  # the safety checker's flag
    columns = ["status", "case", *axes, *nsfw, *metrics]
    numeric = [bool(c in metrics or (c in axes and df[c].map(lambda v: v is None or isinstance(v, (int, float))).all()))
               for c in columns]
    detail_keys = [k for k in DETAIL_KEYS if k in df and k not in columns
                   and (k in ("cell_id", "seed", "image", "machine") or df[k].astype(str).nunique() > 1)]
    twins = [t for a in axes for t in report["twins"].get(a, ())]
    detail_keys += [t for t in twins if t in df]
    rows = []
    for i, (index, rec) in enumerate(zip(df.index, df.to_dict("records"))):
        thumb = report["thumbs"].get(index) or {}
        values = [_json_value(rec.get(c)) for c in columns]
        values = [fmt(v) if v is None and columns[k] in axes else v for k, v in enumerate(values)]
        rows.append({"i": i, "id": _anchor(rec["cell_id"], rec["seed"]), "c": rec["cell_id"], "s": rec["status"],
                     "t": thumb.get("thumb"), "f": thumb.get("diff"), "o": thumb.get("outline"), "v": values,
                     "d": {k: _json_value(rec[k]) for k in detail_keys if not _blank(rec.get(k))}})
    return {"columns": columns, "numeric": numeric, "rows": rows, "page": PAGE_ROWS}


def _best_settings(report: dict, metric: str) -> list[str]:
    """For each axis, the value with the best mean over the other axes."""
    out = []
    by_axis = report["by_axis"]
    if f"{metric}_mean" not in by_axis:
        return out
    for axis in report["axes"]:
        part = by_axis[by_axis["axis"] == axis]
        good = _goodness(metric, part[f"{metric}_mean"]).dropna()
        if len(good) > 1:
            row = part.loc[good.idxmax()]
            out.append(f"{escape(axis)} = <b>{escape(short(row['value']))}</b> (mean {_num(row[f'{metric}_mean'])})")
    return out


TOP_IMAGES = 5  # the people's favourites shown with their thumbnails


def _interval(f: dict) -> str:
    return f"{_num(f['score'])} [{_num(f['low'])}, {_num(f['high'])}]"


def _people_section(report: dict, metrics: list[str]) -> str:
    """The people's ranking: counts and agreement, per axis the winner and how sure with every value's score and
    interval (table and charts), the top images, and which weight-free metric agrees with people."""
    people, df = report["people"], report["df"]
    out = ['<section id="people"><h2>People\'s choice</h2>']
    if not people["answers"]:
        ignored = (f" ({people['ignored']} answer(s) in the ledger are about images not in this view: other grids, "
                   "or cells whose identity has changed)") if people["ignored"] else ""
        out.append(f"<p>No answers about these images yet{ignored}. Run <code>make review</code>, compare pairs in "
                   "the browser, then <code>make repro</code>: the people's ranking then heads this page.</p>")
        return "".join(out) + "</section>"
    alpha = people["agreement"]
    agree = ("one rater, or no pair answered by two raters" if alpha is None else
             "undefined (every answer the same)" if not math.isfinite(alpha) else f"Krippendorff's alpha {alpha:.3f}")
    out.append(f"<p>{people['answers']} blind pairwise answer(s) by {people['raters']} rater(s) about "
               f"{people['images']} image(s); agreement between raters: {agree}"
               + (f"; {people['ignored']} answer(s) about images not in this view are not counted" if
                  people["ignored"] else "") + ". Scores are Bradley-Terry strengths (log odds, 0 = average; ties "
               "count half a win each way) with 95% bootstrap intervals; a value's score is the mean of its "
               "images'.</p>")
    # 1. Per axis: the winner, how sure, every value's score.
    out.append('<table id="people-axes"><thead><tr><th>axis</th><th>people prefer</th><th>how sure</th>'
               "<th>score [95% interval] (rated images, answers) per value</th></tr></thead><tbody>")
    for axis, fig in people["axes"].items():
        cells = "<br>".join(f"{escape(short(v))}: {_interval(f)} ({f['images']}, {f['answers']})"
                            for v, f in sorted(fig["values"].items(), key=lambda kv: value_order(kv[0])))
        winner = "" if fig["winner"] is None else f"<b>{escape(short(fig['winner']))}</b>"
        sure = "" if not math.isfinite(fig["sure"]) else f"{fig['sure']:.0%} of resamples"
        out.append(f"<tr><td>{escape(axis)}</td><td>{winner}</td><td>{sure}</td><td>{cells}</td></tr>")
    out.append("</tbody></table>")
    out.append('<div class="charts">' + "".join(report["people_charts"].values()) + "</div>")
    # 2. The top images.
    rated = df[df["human_score"].notna()].sort_values("human_score", ascending=False).head(TOP_IMAGES)
    out.append('<h3>Top images</h3><table id="people-top"><thead><tr><th>rank</th><th>image</th><th>score [95% '
               "interval]</th><th>answers</th></tr></thead><tbody>")
    for rank, (i, r) in enumerate(rated.iterrows(), 1):
        anchor = _anchor(r["cell_id"], r["seed"])
        settings = ", ".join(f"{a} = {short(r[a])}" for a in report["axes"])
        score = {"score": r["human_score"], "low": r["human_low"], "high": r["human_high"]}
        out.append(f'<tr><td class="num">{rank}</td><td>{_thumb_html(report["thumbs"].get(i), anchor)} '
                   f'<a href="#{escape(anchor)}">{escape(r["cell_id"])}</a> seed {escape(str(r["seed"]))}<br>'
                   f'<small>{escape(settings)}</small></td><td class="num">{_interval(score)}</td>'
                   f'<td class="num">{int(r["human_answers"])}</td></tr>')
    out.append("</tbody></table>")
    # 3. Which metric agrees with people.
    corr = people["correlation"]
    out.append("<h3>Which metric agrees with people</h3>")
    if corr:
        best = max(corr, key=lambda m: corr[m]["rho"])
        out.append(f"<p>Spearman rank correlation between each metric (its better direction up) and the people's "
                   f"score, over the rated images: +1 = the metric orders images as people do. Closest: "
                   f"<b>{escape(best)}</b>.</p>")
        out.append('<table id="people-metrics"><thead><tr><th>metric</th><th>rank correlation</th><th>images</th>'
                   "</tr></thead><tbody>")
        for m in sorted(corr, key=lambda m: -corr[m]["rho"]):
            out.append(f'<tr><td>{escape(m)}</td><td class="num">{corr[m]["rho"]:+.3f}</td>'
                       f'<td class="num">{corr[m]["images"]}</td></tr>')
        out.append("</tbody></table>")
    else:
        out.append("<p>Too few rated images with differing metrics to correlate (three or more are needed).</p>")
    out.append('<p>Every rated image, best first: <a href="ranking.csv">ranking.csv</a>.</p></section>')
    return "".join(out)


def render(report: dict, metrics: list[str], rows: str | None, cols: str | None, comet: str | None) -> str:
    """The HTML text of the page. `report` is what build_report returned; paths are relative to the page."""
    df: pd.DataFrame = report["df"]
    axes = report["axes"]
    out = ['<!doctype html>\n<html lang="en"><head><meta charset="utf-8">',
           "<title>inpaint-sweep report</title>", f"<style>{STYLE}</style></head><body>",
           "<h1>inpaint-sweep report</h1>"]

    # 1. People's choice first: what the sweep is for (which settings make the best pictures), as people judged.
    out.append(_people_section(report, metrics))

    # 2. Summary: counts, sweep, Comet, the axes, the settings every image shares.
    out.append('<section id="summary"><h2>Summary</h2><ul>')
    out.append(f"<li>{report['cells']} cell(s), {report['images']} image(s): {report['ok']} ok, "
               f"{report['failed']} failed; {report['grids']} grid(s) of {escape(rows or '-')} (rows) &times; "
               f"{escape(cols or '-')} (columns)</li>")
    axis_words = []
    for a in axes:
        n = df.loc[df["status"] == "ok", a].nunique(dropna=False)
        twins = report["twins"].get(a) or []
        axis_words.append(f"{escape(a)} ({n} values{', with ' + escape(', '.join(twins)) if twins else ''})")
    out.append(f"<li>axes (what varied): {', '.join(axis_words) or '(none)'}</li>")
    out.append(f"<li>sweep: {escape(', '.join(report['sweep_ids']) or '(unknown)')}</li>")
    out.append(f"<li>Comet report experiment: {_comet(comet)}</li></ul>")
    if report["constant"]:
        out.append("<details><summary>Settings every image shares</summary><table><tbody>")
        for k, v in report["constant"].items():
            out.append(f"<tr><th>{escape(k)}</th><td>{escape(fmt(v))}</td></tr>")
        out.append("</tbody></table></details>")
    out.append("</section>")

    # 3. Best settings per metric: the best image (toggles on its thumbnail) and the best value of each axis on
    # average over the others.
    thumb_of = {_anchor(c, s): report["thumbs"].get(i) for i, c, s in zip(df.index, df["cell_id"], df["seed"])}
    out.append('<section id="best"><h2>Best settings</h2><table id="best-table"><thead><tr><th>metric</th>'
               "<th>better</th><th>mean</th><th>best</th><th>best image</th><th>best on average over the other axes"
               "</th></tr></thead><tbody>")
    for m in metrics:
        best = report["best"].get(m)
        if best is None:
            continue
        anchor = _anchor(best["cell_id"], best["seed"])
        settings = ", ".join(f"{a} = {short(best[a])}" for a in axes if a in best)
        out.append(f'<tr><td>{escape(m)}</td><td>{best["better"]}</td><td class="num">{_num(report["mean"].get(m))}'
                   f'</td><td class="num">{_num(best["value"])}</td><td>{_thumb_html(thumb_of.get(anchor), anchor)} '
                   f'<a href="#{escape(anchor)}">{escape(best["cell_id"])}</a><br><small>{escape(settings)}</small>'
                   f'</td><td>{"<br>".join(_best_settings(report, m))}</td></tr>')
    out.append("</tbody></table></section>")

    # 4. Charts: each metric against each axis, mean with its spread over the other axes.
    by_axis = report["by_axis"]
    out.append('<section id="charts"><h2>Metrics by axis</h2><p>Mean per value (line), &plusmn;1 std (bar) and '
               "min&ndash;max (band) over the other axes; hover a dot for the numbers.</p>")
    for m in metrics:
        if f"{m}_mean" not in by_axis:
            continue
        out.append(f'<h3>{escape(m)}</h3><div class="charts">')
        for axis in axes:
            part = by_axis[by_axis["axis"] == axis]
            out.append(axis_chart(f"{m} vs {axis}", [short(v, 14) for v in part["value"]],
                                  *[[_json_value(v) for v in part[f"{m}_{s}"]] for s in ("mean", "std", "min", "max")],
                                  part["images"].tolist()))
        out.append("</div>")
    out.append("</section>")

    # 5. Grids, with the input and the mask beside each; loaded as they scroll into view.
    out.append(f'<section id="grids"><h2>Grids ({len(report["grid_files"])})</h2>')
    for g in report["grid_files"]:
        rel = f"grids/{quote(g['path'].name)}"
        out.append(f'<figure><img loading="lazy" src="{rel}" alt="{escape(g["title"])}" width="{g["size"][0]}" '
                   f'height="{g["size"][1]}"><figcaption>{escape(g["title"])} ({g["cells"]} cell(s))'
                   "</figcaption></figure>")
    out.append("</section>")

    # 6. A row per image, sortable by any column, a page at a time; every setting of the clicked image below.
    data = _table_data(report, metrics)
    head = ["image", "cell", *data["columns"]]
    pager = ('<p class="pager"><button data-step="-1">&larr; previous</button><span></span>'
             '<button data-step="1">next &rarr;</button></p>')
    out.append(f'<section id="runs"><h2>Images ({len(df)})</h2><p>Click a column header to sort. Show on every '
               'image: <label><input type="checkbox" class="global" data-k="diff"> difference from the photo</label> '
               '<label><input type="checkbox" class="global" data-k="mask"> mask outline</label> '
               "(or use each image's &Delta; and &#9711; buttons).</p>" + pager)
    out.append('<table class="sortable" id="runs-table"><thead><tr>'
               + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr></thead><tbody></tbody></table>" + pager
               + '</section><section id="details"><h2>Image details</h2><div id="detail"></div></section>')
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    out.append(f'<script type="application/json" id="runs-data">{payload}</script>')
    out.append(f"<script>{SCRIPT}</script></body></html>\n")
    return "\n".join(out)


def write_html(path: str | Path, report: dict, metrics: list[str], rows: str | None, cols: str | None,
               comet: str | None) -> Path:
    path = Path(path)
    path.write_text(render(report, metrics, rows, cols, comet), encoding="utf-8")
    return path

