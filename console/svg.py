"""Charts as SVG text, drawn on the server (no script, no library in the browser)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

COLOURS = {"p50": "#2a9d8f", "p90": "#264653", "measured": "#264653",
           "predicted": "#e76f51", "budget": "#b00020", "before": "#e76f51", "after": "#2a9d8f"}


def _ticks(top: float) -> list[float]:
    """About four round tick values from 0 to ``top``."""
    raw = max(top / 4, 1e-12)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(mag * m for m in (1, 2, 2.5, 5, 10) if mag * m >= raw)
    return [step * i for i in range(int(top / step) + 1)]


def chart(title: str, labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]],
          *, unit: str, budget: float | None = None, width: int = 460, height: int = 240,
          chart_id: str = "") -> str:
    """Points per deployment for each series, a dashed budget line; ``None`` is not drawn."""
    left, right, top, bottom = 56, 110, 28, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for _, vs in series for v in vs if v is not None]
    if budget is not None:
        values.append(budget)
    ymax = (max(values) * 1.15) if values else 1.0
    n = max(len(labels), 1)

    def x(i: int) -> float:
        return left + plot_w * (i + 0.5) / n

    def y(v: float) -> float:
        return top + plot_h * (1 - v / ymax)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{escape(chart_id)}" '
           f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="{escape(title)}">',
           f'<text x="{left}" y="16" class="title">{escape(title)}</text>',
           f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
           'stroke="#888"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#888"/>']
    for t in _ticks(ymax):
        out.append(f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end" '
                   f'class="tick">{t:g}</text>')
        out.append(f'<line x1="{left}" y1="{y(t):.1f}" x2="{left + plot_w}" y2="{y(t):.1f}" '
                   'stroke="#eee"/>')
    out.append(f'<text x="12" y="{top + plot_h / 2:.1f}" class="tick" '
               f'transform="rotate(-90 12 {top + plot_h / 2:.1f})" '
               f'text-anchor="middle">{escape(unit)}</text>')
    step = max(1, n // 8)
    for i, label in enumerate(labels):
        if i % step == 0:
            out.append(f'<text x="{x(i):.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
                       f'class="tick">{escape(label)}</text>')
    if budget is not None:
        out.append(f'<line class="budget" x1="{left}" y1="{y(budget):.1f}" '
                   f'x2="{left + plot_w}" y2="{y(budget):.1f}" stroke="{COLOURS["budget"]}" '
                   'stroke-dasharray="6 4"/>')
    legend = [(name, COLOURS.get(name, "#555")) for name, _ in series]
    for name, vs in series:
        colour = COLOURS.get(name, "#555")
        pts = [(x(i), y(v)) for i, v in enumerate(vs) if v is not None]
        if len(pts) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                       'stroke-width="1.5" opacity="0.6"/>')
        for px, py in pts:
            if name == "predicted":
                out.append(f'<rect class="point predicted" x="{px - 4:.1f}" y="{py - 4:.1f}" '
                           f'width="8" height="8" fill="{colour}" transform="rotate(45 '
                           f'{px:.1f} {py:.1f})"/>')
            else:
                out.append(f'<circle class="point {escape(name)}" cx="{px:.1f}" cy="{py:.1f}" '
                           f'r="4" fill="{colour}"/>')
    if budget is not None:
        legend.append(("budget", COLOURS["budget"]))
    for k, (name, colour) in enumerate(legend):
        out += _legend_entry(left + plot_w, top, k, name, colour)
    return _close(out, values, left + plot_w / 2, top + plot_h / 2)


def scatter(title: str, series: Sequence[tuple[str, Sequence[tuple[float, float]]]], *,
            unit: str, size: int = 300, chart_id: str = "") -> str:
    """Points (measured, predicted) per series on equal axes, with the line predicted = measured."""
    left, right, top, bottom = 56, 90, 28, 40
    side = size - top - bottom
    width = left + side + right
    values = [v for _, pts in series for pt in pts for v in pt]
    vmax = (max(values) * 1.1) if values else 1.0

    def x(v: float) -> float:
        return left + side * v / vmax

    def y(v: float) -> float:
        return top + side * (1 - v / vmax)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{escape(chart_id)}" '
           f'width="{width}" height="{size}" viewBox="0 0 {width} {size}" role="img" '
           f'aria-label="{escape(title)}">',
           f'<text x="{left}" y="16" class="title">{escape(title)}</text>',
           f'<line x1="{left}" y1="{top + side}" x2="{left + side}" y2="{top + side}" '
           'stroke="#888"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + side}" stroke="#888"/>']
    for t in _ticks(vmax):
        out.append(f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end" '
                   f'class="tick">{t:g}</text>')
        out.append(f'<text x="{x(t):.1f}" y="{top + side + 16}" text-anchor="middle" '
                   f'class="tick">{t:g}</text>')
    out.append(f'<line class="diagonal" x1="{x(0):.1f}" y1="{y(0):.1f}" x2="{x(vmax):.1f}" '
               f'y2="{y(vmax):.1f}" stroke="#999" stroke-dasharray="4 4"/>')
    out.append(f'<text x="{left + side / 2}" y="{size - 6}" text-anchor="middle" '
               f'class="tick">measured {escape(unit)}</text>')
    out.append(f'<text x="12" y="{top + side / 2:.1f}" class="tick" '
               f'transform="rotate(-90 12 {top + side / 2:.1f})" '
               f'text-anchor="middle">predicted {escape(unit)}</text>')
    for k, (name, pts) in enumerate(series):
        colour = COLOURS.get(name, "#555")
        for mx, py in pts:
            out.append(f'<circle class="point {escape(name)}" cx="{x(mx):.1f}" '
                       f'cy="{y(py):.1f}" r="4" fill="{colour}" opacity="0.8"/>')
        out += _legend_entry(left + side, top, k, name, colour)
    return _close(out, values, left + side / 2, top + side / 2)


def _legend_entry(right: float, top: float, k: int, name: str, colour: str) -> list[str]:
    """The k-th legend row (a swatch and its name) to the right of a plot."""
    ly = top + 10 + 18 * k
    return [f'<rect x="{right + 14}" y="{ly - 8}" width="10" height="10" fill="{colour}"/>',
            f'<text x="{right + 30}" y="{ly + 1}" class="tick">{escape(name)}</text>']


def _close(out: list[str], values: Sequence[object], cx: float, cy: float) -> str:
    """The finished SVG; an empty chart says so in its middle."""
    if not values:
        out.append(f'<text x="{cx}" y="{cy}" text-anchor="middle" '
                   'class="tick">no measurement yet</text>')
    out.append("</svg>")
    return "\n".join(out)
