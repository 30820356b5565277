"""Plots for the dashboard as inline SVG strings, drawn on the server.

Pure functions of numbers (no I/O, no JavaScript, no fonts to fetch): the page works offline and
in a locked-down hospital browser, and a test can parse every plot as XML.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

COLOURS = {"champion": "#1f5fa8", "challenger": "#d0570f"}  # blue / orange: distinct in colour blindness
FALLBACK = ("#1f5fa8", "#d0570f", "#2a8a4a", "#8a2a7a")
INK, GRID, MUTED = "#222", "#e3e3e3", "#666"


@dataclass(frozen=True)
class Series:
    label: str
    x: Sequence[float]
    y: Sequence[float]
    colour: str
    markers: bool = False


def colour(name: str, index: int = 0) -> str:
    return COLOURS.get(name, FALLBACK[index % len(FALLBACK)])


def _num(v: float) -> str:
    return f"{v:.1f}"


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" font-family="sans-serif" font-size="12">'
        f"<title>{escape(title)}</title>" + "".join(body) + "</svg>"
    )


def line_plot(
    series: Sequence[Series],
    title: str,
    x_label: str,
    y_label: str,
    upper: float = 1.0,
    diagonal: str | None = None,
    percent: bool = False,
    size: int = 360,
    ticks: int = 5,
) -> str:
    """Square plot on [0, upper] x [0, upper] with a grid, an optional diagonal (chance or
    perfect calibration) and a legend: the shape both ROC and calibration curves need."""
    left, top, plot = 56, 30, size - 56 - 16
    height = top + plot + 46 + 18 * max(1, len(series) + (1 if diagonal else 0))

    def sx(v: float) -> float:
        return left + plot * min(max(v / upper, 0.0), 1.0)

    def sy(v: float) -> float:
        return top + plot * (1 - min(max(v / upper, 0.0), 1.0))

    body = [f'<text x="{left}" y="18" font-weight="bold" fill="{INK}">{escape(title)}</text>']
    for i in range(ticks + 1):
        v = upper * i / ticks
        label = f"{v * 100:.0f}%" if percent else f"{v:.1f}"
        body.append(
            f'<line x1="{_num(sx(v))}" y1="{top}" x2="{_num(sx(v))}" y2="{top + plot}" stroke="{GRID}"/>'
            f'<line x1="{left}" y1="{_num(sy(v))}" x2="{left + plot}" y2="{_num(sy(v))}" stroke="{GRID}"/>'
            f'<text x="{_num(sx(v))}" y="{top + plot + 16}" text-anchor="middle" '
            f'fill="{MUTED}">{label}</text>'
            f'<text x="{left - 6}" y="{_num(sy(v) + 4)}" text-anchor="end" fill="{MUTED}">{label}</text>'
        )
    body.append(f'<rect x="{left}" y="{top}" width="{plot}" height="{plot}" fill="none" stroke="{MUTED}"/>')
    body.append(
        f'<text x="{left + plot / 2}" y="{top + plot + 34}" text-anchor="middle" fill="{INK}">'
        f"{escape(x_label)}</text>"
        f'<text transform="translate(14 {top + plot / 2}) rotate(-90)" text-anchor="middle" fill="{INK}">'
        f"{escape(y_label)}</text>"
    )
    if diagonal:
        body.append(
            f'<line x1="{left}" y1="{top + plot}" x2="{left + plot}" y2="{top}" stroke="{MUTED}" '
            'stroke-dasharray="4 4"/>'
        )
    for s in series:
        points = " ".join(f"{_num(sx(a))},{_num(sy(b))}" for a, b in zip(s.x, s.y, strict=True))
        if points:
            body.append(f'<polyline points="{points}" fill="none" stroke="{s.colour}" stroke-width="2"/>')
        if s.markers:
            body += [
                f'<circle cx="{_num(sx(a))}" cy="{_num(sy(b))}" r="3.5" fill="{s.colour}"/>'
                for a, b in zip(s.x, s.y, strict=True)
            ]
    legend_y = top + plot + 56
    for i, s in enumerate(series):
        y = legend_y + 18 * i
        body.append(
            f'<line x1="{left}" y1="{y - 4}" x2="{left + 22}" y2="{y - 4}" stroke="{s.colour}" '
            'stroke-width="3"/>'
            f'<text x="{left + 30}" y="{y}" fill="{INK}">{escape(s.label)}</text>'
        )
    if diagonal:
        y = legend_y + 18 * len(series)
        body.append(
            f'<line x1="{left}" y1="{y - 4}" x2="{left + 22}" y2="{y - 4}" stroke="{MUTED}" '
            f'stroke-dasharray="4 4"/><text x="{left + 30}" y="{y}" fill="{MUTED}">{escape(diagonal)}</text>'
        )
    return _svg(size, height, title, body)


def roc_plot(curves: dict[str, dict], title: str = "ROC curve") -> str:
    """One ROC line per variant; `curves` maps a legend label to report `curves` dicts."""
    series = [
        Series(label, c["roc"]["fpr"], c["roc"]["tpr"], colour(label.split()[0], i))
        for i, (label, c) in enumerate(curves.items())
        if c
    ]
    return line_plot(series, title, "1 - specificity", "sensitivity", diagonal="chance (AUROC 0.5)")


def calibration_plot(curves: dict[str, dict], title: str = "Calibration") -> str:
    """Observed readmission rate against mean predicted risk per equal-frequency bin. The axes
    stop a little above the largest point: readmission risks rarely pass 50%, and a 0-100% square
    would squeeze every point into a corner."""
    series, highest = [], 0.0
    for i, (label, c) in enumerate(curves.items()):
        if not c:
            continue
        xs = [b["predicted"] for b in c["calibration"]]
        ys = [b["observed"] for b in c["calibration"]]
        highest = max([highest, *xs, *ys])
        series.append(Series(label, xs, ys, colour(label.split()[0], i), markers=True))
    step = 0.1 if highest < 0.6 else 0.2  # ticks every 10 (or 20) risk points
    ticks = min(int(highest / step) + 1, round(1 / step))
    return line_plot(
        series,
        title,
        "mean predicted risk",
        "observed readmission rate",
        upper=max(2, ticks) * step,
        diagonal="perfect calibration",
        percent=True,
        ticks=max(2, ticks),
    )


def bars(
    rows: Sequence[tuple[str, Sequence[tuple[str, float | None, str]]]],
    title: str,
    width: int = 640,
    percent: bool = True,
) -> str:
    """Horizontal bars on a 0-100% scale: `rows` are (group label, [(bar label, value, colour)]).
    A missing value is written out as "n/a", not drawn as a zero."""
    bar_h, gap = 16, 10
    group_w = 7 * max((len(g) for g, _ in rows), default=0) + 12
    left = group_w + 7 * max((len(label) for _, items in rows for label, _, _ in items), default=0) + 10
    plot = width - left - 70
    lines = sum(len(b) for _, b in rows)
    height = 30 + lines * (bar_h + 4) + len(rows) * gap + 10
    body = [f'<text x="0" y="16" font-weight="bold" fill="{INK}">{escape(title)}</text>']
    y = 30
    for group, items in rows:
        body.append(f'<text x="0" y="{y + 12}" fill="{INK}">{escape(group)}</text>')
        for label, value, fill in items:
            if label:
                body.append(
                    f'<text x="{left - 6}" y="{y + 12}" text-anchor="end" '
                    f'fill="{MUTED}">{escape(label)}</text>'
                )
            if value is None:
                body.append(f'<text x="{left}" y="{y + 12}" fill="{MUTED}">n/a</text>')
            else:
                w = plot * min(max(value, 0.0), 1.0)
                text = f"{value * 100:.1f}%" if percent else f"{value:.3f}"
                body.append(
                    f'<rect x="{left}" y="{y}" width="{_num(w)}" height="{bar_h}" fill="{fill}"/>'
                    f'<text x="{_num(left + w + 4)}" y="{y + 12}" fill="{INK}">{text}</text>'
                )
            y += bar_h + 4
        y += gap
    body.append(f'<line x1="{left}" y1="26" x2="{left}" y2="{y - gap}" stroke="{MUTED}"/>')
    return _svg(width, height, title, body)
