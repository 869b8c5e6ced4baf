"""Charts for the report page as inline SVG text: drawn here, offline, with no charting library or script."""

from __future__ import annotations

import math
from html import escape

COLOUR = "#1f77b4"


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    step = (hi - lo) / n
    magnitude = 10 ** math.floor(math.log10(step)) if step > 0 else 1
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= step), default=step)
    start = math.ceil(lo / step) * step
    return [start + k * step for k in range(int((hi - start) / step + 1e-9) + 1)]


def axis_chart(title: str, labels: list[str], mean: list[float], std: list[float], low: list[float],
               high: list[float], counts: list[int], width: int = 300, height: int = 190, band: str | None = None,
               counted: str = "image(s)") -> str:
    """Mean of a metric per value of an axis (dots joined by a line), its spread over the other axes (a bar of
    +-1 std and a light band from min to max), values in order along x. Hover a dot for the numbers. With `band`
    (its name, e.g. "95% interval"), low and high are that interval instead of min and max, and std is not drawn."""
    points = [(k, m, s, lo, hi, n) for k, (m, s, lo, hi, n) in enumerate(zip(mean, std, low, high, counts))
              if m is not None and math.isfinite(m)]
    left, right, top, bottom = 52, 10, 24, 44
    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
           f'<text x="{width / 2}" y="15" text-anchor="middle" font-size="12" font-weight="bold">{escape(title)}</text>']
    if not points:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="11">no values</text></svg>')
        return "".join(out)
    values = [v for p in points for v in (p[1], p[3], p[4], p[1] - _z(p[2]), p[1] + _z(p[2])) if math.isfinite(v)]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12 * max(1.0, abs(hi)):
        lo, hi = lo - max(1.0, abs(lo)) * 0.05, hi + max(1.0, abs(hi)) * 0.05
    pad = (hi - lo) * 0.06
    lo, hi = lo - pad, hi + pad
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(k):
        return left + plot_w * (k + 0.5) / len(labels)

    def y(v):
        return top + plot_h * (hi - v) / (hi - lo)

    # 1. Frame, y ticks with light grid lines, x labels.
    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#bbb"/>')
    for t in _ticks(lo, hi):
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#e4e4e4"/>'
                   f'<text x="{left - 4}" y="{y(t) + 4:.1f}" text-anchor="end" font-size="10">{t:.4g}</text>')
    rotate = len(labels) > 4 or max(map(len, labels)) > 8
    for k, label in enumerate(labels):
        if rotate:
            out.append(f'<text transform="translate({x(k):.1f},{top + plot_h + 10}) rotate(30)" font-size="10">'
                       f"{escape(label)}</text>")
        else:
            out.append(f'<text x="{x(k):.1f}" y="{top + plot_h + 14}" text-anchor="middle" font-size="10">'
                       f"{escape(label)}</text>")
    # 2. Spread: min..max band, +-std bars; then the means.
    band = [(x(k), y(h)) for k, _, _, _, h, _ in points] + [(x(k), y(lw)) for k, _, _, lw, _, _ in reversed(points)]
    out.append('<polygon points="' + " ".join(f"{a:.1f},{b:.1f}" for a, b in band)
               + f'" fill="{COLOUR}" fill-opacity="0.12" stroke="none"/>')
    for k, m, s, _, _, _ in points:
        s = _z(s)
        out.append(f'<line x1="{x(k):.1f}" x2="{x(k):.1f}" y1="{y(m - s):.1f}" y2="{y(m + s):.1f}" '
                   f'stroke="{COLOUR}" stroke-width="6" stroke-opacity="0.35"/>')
    out.append('<polyline points="' + " ".join(f"{x(p[0]):.1f},{y(p[1]):.1f}" for p in points)
               + f'" fill="none" stroke="{COLOUR}" stroke-width="2"/>')
    for k, m, s, lw, h, n in points:
        tip = (f"{labels[k]}: {m:.4g}, {band} {lw:.4g} to {h:.4g}, {n} {counted}" if band else
               f"{labels[k]}: mean {m:.4g}, std {_z(s):.3g}, min {lw:.4g}, max {h:.4g}, {n} {counted}")
        out.append(f'<circle cx="{x(k):.1f}" cy="{y(m):.1f}" r="3.5" fill="{COLOUR}"><title>{escape(tip)}</title>'
                   "</circle>")
    out.append("</svg>")
    return "".join(out)


def _z(value) -> float:
    return value if value is not None and math.isfinite(value) else 0.0
