"""Line charts as inline SVG, drawn on the server: no JavaScript library, no external fetch
(hospital networks are often offline), readable by screen readers through <title>/<desc>."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

PALETTE = ("#1f6feb", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#0b7285")


@dataclass(frozen=True, slots=True)
class Line:
    label: str
    points: list[tuple[float, float]]  # (unix time, value)


def human(value: float, unit: str = "") -> str:
    """1234567 -> '1.2M'; the axis needs short numbers."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:.1f}{suffix}{unit}"
    text = f"{value:.2f}".rstrip("0").rstrip(".") if value % 1 else f"{value:.0f}"
    return f"{text}{unit}"


def _nice_max(value: float) -> float:
    """The next 1, 2 or 5 times a power of ten, so gridlines land on round numbers."""
    if value <= 0:
        return 1.0
    power = 1.0
    while power * 10 <= value:
        power *= 10
    while power > value:
        power /= 10
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power  # pragma: no cover - the loop always returns


def _step_max(value: float) -> float:
    """A top whose four gridline steps are round (1, 2, 2.5 or 5 times a power of ten), so
    every label reads exactly (2.5k, not 1.2k for 1,250)."""
    if value <= 0:
        return 1.0
    quarter = value / 4
    power = 10.0 ** math.floor(math.log10(quarter))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= quarter * (1 - 1e-9):
            return 4 * step * power
    return 40 * power  # pragma: no cover - the loop always returns


def _integer_max(value: float) -> float:
    """A top whose four gridline steps are whole numbers (1, 2, 5, 10, ... each): a count
    axis never reads 0.25 connections."""
    return 4 * _nice_max(max(value, 4.0) / 4)


LEGEND_ROW = 14  # px per legend row under the chart
CHAR_W = 6.0  # a 10 px system font's average character width, for laying the legend out


def _legend(lines: list[Line], left: int, width: int, top: int) -> tuple[list[str], int]:
    """Every line's full label with its colour, in rows under the chart (never cut at the
    right edge, never shortened): the SVG elements and the height they take."""
    out: list[str] = []
    x, row = float(left), 0
    for n, ln in enumerate(lines):
        need = 14 + len(ln.label) * CHAR_W + 14
        if x > left and x + need > width:
            x, row = float(left), row + 1
        y = top + row * LEGEND_ROW
        colour = PALETTE[n % len(PALETTE)]
        out.append(
            f'<rect x="{x:.0f}" y="{y - 8}" width="10" height="3" fill="{colour}"/>'
            f'<text x="{x + 14:.0f}" y="{y}" class="legend">{escape(ln.label)}</text>'
        )
        x += need
    return out, (row + 1) * LEGEND_ROW if lines else 0


def line_chart(
    title: str,
    lines: list[Line],
    start: float,
    end: float,
    unit: str = "",
    width: int = 640,
    height: int = 200,
    integer: bool = False,
) -> str:
    """An SVG line chart of `lines` over [start, end] (unix seconds, UTC labels); the legend
    goes under it and makes it taller. `integer`: a count, gridlines on whole numbers."""
    left, right, top, bottom = 48, 10, 22, 24
    plot_w, plot_h = width - left - right, height - top - bottom
    span = max(end - start, 1e-9)
    highest = max((v for ln in lines for _, v in ln.points), default=0.0)
    peak = _integer_max(highest) if integer else _step_max(highest)
    legend, legend_h = _legend(lines, left, width - right, height + 8)
    full_h = height + legend_h

    def x(t: float) -> float:
        return left + (min(max(t, start), end) - start) / span * plot_w

    def y(v: float) -> float:
        return top + plot_h - (v / peak) * plot_h

    summary = ", ".join(
        f"{ln.label}: latest {human(ln.points[-1][1], unit)}" if ln.points else f"{ln.label}: none"
        for ln in lines
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {width} {full_h}" width="{width}" height="{full_h}">',
        f"<title>{escape(title)}</title><desc>{escape(summary or 'no data')}</desc>",
        f'<text x="{left}" y="14" class="chart-title">{escape(title)}</text>',
    ]
    for i in range(5):  # horizontal gridlines with their values
        value = peak * i / 4
        gy = y(value)
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{gy:.1f}" y2="{gy:.1f}" class="grid"/>'
            f'<text x="{left - 4}" y="{gy + 4:.1f}" text-anchor="end" class="axis">'
            f"{escape(human(value, unit))}</text>"
        )
    for i in range(5):  # time labels
        t = start + span * i / 4
        label = datetime.fromtimestamp(t, UTC).strftime("%H:%M")
        anchor = ("start", "middle", "middle", "middle", "end")[i]  # the ends stay inside
        out.append(
            f'<text x="{x(t):.1f}" y="{height - 6}" text-anchor="{anchor}" class="axis">'
            f"{label}</text>"
        )
    for n, ln in enumerate(lines):
        colour = PALETTE[n % len(PALETTE)]
        if len(ln.points) >= 2:
            coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in ln.points)
            out.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{coords}">'
                f"<title>{escape(ln.label)}</title></polyline>"
            )
        elif ln.points:
            t, v = ln.points[0]
            out.append(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="2" fill="{colour}"/>')
    out += legend
    if not any(ln.points for ln in lines):
        out.append(
            f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle" '
            'class="axis">no data yet</text>'
        )
    out.append("</svg>")
    return "".join(out)
