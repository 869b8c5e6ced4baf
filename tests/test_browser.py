"""The HTML report in real headless Chromium, opened from disk: every image decodes, the charts are drawn, the table
sorts and pages, the difference heatmap and mask outline toggle, nothing is fetched from a network, and a screenshot
is saved as a test artefact. One Chromium run does both (it starts in a second or three).

Chromium is Debian's `chromium` package; `make test` installs it when missing.
"""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inpaint_sweep.html_report import write_html
from inpaint_sweep.report import build_report, metric_columns

from conftest import report_settings

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (`make test` installs it: apt-get install chromium)"
)

# Headless, and nothing phones home: no sync, updates, QUIC or background traffic; every host name fails to resolve.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND"]

# Appended to a copy of the page: once every image has loaded or failed, report what the page shows into the DOM.
CHECK = r"""<pre id="check-result"></pre><script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var table = document.getElementById("runs-table"), head = table.tHead.rows[0].cells;
  var col = Array.prototype.map.call(head, function (h) { return h.textContent; }).indexOf("drift_psnr");
  var column = function () {
    return Array.prototype.map.call(table.tBodies[0].rows, function (r) { return r.cells[col].dataset.sort; });
  };
  head[col].click(); var ascending = column();
  head[col].click(); var descending = column();
  var charts = Array.prototype.map.call(document.querySelectorAll("svg.chart"), function (c) {
    var box = c.getBoundingClientRect();
    return [box.width, box.height, c.querySelectorAll("circle").length];
  });
  var first = table.tBodies[0].rows[0], thumb = first.querySelector("img.thumb"), before = thumb.getAttribute("src");
  first.querySelector("button[data-k=diff]").click();
  first.querySelector("button[data-k=mask]").click();
  var outline = first.querySelector("img.outline");
  document.getElementById("check-result").textContent = JSON.stringify({
    charts: charts, toggled: [before, thumb.getAttribute("src"), getComputedStyle(outline).display,
                              outline.getBoundingClientRect().height],
    thumbs: table.querySelectorAll("img.thumb").length, pager: document.querySelector(".pager span").textContent,
    images: images.length,
    broken: images.filter(function (im) { return !(im.complete && im.naturalWidth > 0); })
                  .map(function (im) { return im.getAttribute("src"); }),
    grids: images.filter(function (im) { return im.getAttribute("src").indexOf("grids/") === 0; })
                 .map(function (im) { return [im.naturalWidth, im.naturalHeight]; }),
    external: Array.prototype.map.call(document.querySelectorAll("[src], [href]"), function (el) {
      return el.getAttribute("src") || el.getAttribute("href");
    }).filter(function (u) { return /^[a-z]+:|^\/\//i.test(u); }),
    links: document.querySelectorAll("a[href^='#']").length,
    ascending: ascending, descending: descending, title: document.title
  });
});
</script></body>"""


@pytest.fixture(scope="module")
def page(tmp_path_factory, fake_cells):
    """A report of the default 24-cell grid with one failed cell, written as the report stage writes it."""
    root = tmp_path_factory.mktemp("browser")
    fake_cells(root / "generate", failed={(12.0, 0.75, 4, "cartoon")})
    report = build_report(root / "generate" / "cells", root / "report",
                          **report_settings(rows="guidance", cols="strength"))
    comet = "results/report/comet/0123456789abcdef.zip"
    return write_html(root / "report" / "index.html", report, metric_columns(report["df"]), "guidance", "strength",
                      comet), report


@pytest.fixture(scope="module")
def shown(page, tmp_path_factory) -> tuple[dict, Path]:
    """Open the page in Chromium once: what the check script saw in the page (JSON), and a screenshot."""
    index, _ = page
    check = index.with_name("check.html")  # beside the page, so its relative image paths resolve the same way
    # Lazy images load only when scrolled to; the check wants every image decoded, so it loads them all at once.
    check.write_text(index.read_text().replace('loading="lazy" ', "").replace("</body>", CHECK))
    shot = tmp_path_factory.mktemp("screenshot") / "report.png"  # the test artefact: look at it under pytest's tmp
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={shot.parent / 'profile'}", "--window-size=1280,2400",
           "--hide-scrollbars", "--virtual-time-budget=10000", f"--screenshot={shot}", "--dump-dom", check.as_uri()]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    start = result.stdout.index('<pre id="check-result">') + len('<pre id="check-result">')
    return json.loads(result.stdout[start:result.stdout.index("</pre>", start)]), shot


def test_every_image_decodes_and_the_table_sorts(page, shown):
    _, report = page
    seen, _ = shown
    assert seen["title"] == "inpaint-sweep report"
    assert seen["broken"] == [] and seen["thumbs"] == 23  # grids, thumbnails, outlines: all decoded
    assert seen["pager"] == "page 1 of 1 (24 images)"
    # A chart per metric and axis (4 axes), each drawn with a dot per axis value.
    metrics = metric_columns(report["df"])
    assert len(seen["charts"]) == 4 * len(metrics) and all(w > 200 and h > 100 for w, h, _ in seen["charts"])
    assert sorted({n for _, _, n in seen["charts"]}) == [2, 3]
    before, after, display, height = seen["toggled"]
    assert before.endswith("-seed-0.jpg") and after == before.replace(".jpg", "-diff.jpg")
    assert display == "block" and height > 30
    assert sorted(seen["grids"]) == sorted([list(g["size"]) for g in report["grid_files"]])
    assert seen["external"] == [] and seen["links"] > 24  # relative paths only; in-page links to image details
    values = [float(v) for v in seen["ascending"] if v != ""]
    assert values == sorted(values) and len(values) == 23 and seen["ascending"][-1] == ""  # the failed row last
    assert [float(v) for v in seen["descending"] if v != ""] == sorted(values, reverse=True)


def test_screenshot_of_the_report(shown):
    _, shot = shown
    print(f"screenshot: {shot}")
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB")).astype(int)
    assert pixels.shape[:2] == (2400, 1280)
    # The page's text and thumbnails are drawn: plenty of dark pixels and of colour (the random test images).
    assert (pixels.max(axis=2) < 80).sum() > 2000
    assert (pixels.max(axis=2) - pixels.min(axis=2) > 100).sum() > 5000
    # The charts are visible: their lines and dots in the charts' blue (#1f77b4), rows of them.
    blue = (abs(pixels[..., 0] - 0x1F) < 12) & (abs(pixels[..., 1] - 0x77) < 12) & (abs(pixels[..., 2] - 0xB4) < 12)
    assert blue.sum() > 3000
    assert len(np.unique(np.nonzero(blue)[0] // 200)) >= 3  # in several bands down the page
