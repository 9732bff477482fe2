"""Inline SVG charts drawn at build time: no JavaScript, no external files.

A stacked bar per day shows the trend at a glance; each bar segment has a ``<title>``
(a tooltip) with the exact number, and the figure's ``aria-label`` says what it shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

STATE_COLORS = {
    "up to date": "#2e7d32",
    "pending": "#f9a825",
    "failed": "#c62828",
    "rolled back": "#ad1457",
    "rejected": "#6a1b9a",
    "stale": "#8d6e63",
    "offline": "#546e7a",
    "unverified": "#000000",
    "never reported": "#bdbdbd",
}
PALETTE = ("#1565c0", "#00838f", "#7cb342", "#ef6c00", "#8e24aa", "#9e9e9e")


@dataclass(frozen=True)
class Series:
    label: str
    color: str
    values: Sequence[int]


def stacked_bars(
    labels: Sequence[str], series: Sequence[Series], *, title: str, width: int = 720
) -> Markup:
    """One bar per label, ``series`` stacked bottom-up in the order given."""
    height, top, bottom, left, right = 220, 10, 40, 44, 10
    legend_rows = (len(series) + 3) // 4
    total_height = height + legend_rows * 20
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(s.values[i] for s in series) for i in range(len(labels))]
    peak = max([*totals, 1])
    step = plot_w / max(len(labels), 1)
    bar = max(step * 0.8, 1.0)
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {total_height}" width="{width}" '
        f'height="{total_height}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for fraction in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - fraction)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">'
            f"{round(peak * fraction)}</text>"
        )
    for index, label in enumerate(labels):
        x = left + index * step + (step - bar) / 2
        y = top + plot_h
        for item in series:
            value = item.values[index]
            if value <= 0:
                continue
            h = plot_h * value / peak
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{item.color}"><title>{escape(label)}: {value} {escape(item.label)}'
                "</title></rect>"
            )
        if index % max(len(labels) // 6, 1) == 0 or index == len(labels) - 1:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
                f'font-size="11">{escape(label)}</text>'
            )
    for index, item in enumerate(series):
        lx = left + (index % 4) * (plot_w / 4)
        ly = height + (index // 4) * 20
        parts.append(
            f'<rect x="{lx:.1f}" y="{ly - 10}" width="12" height="12" fill="{item.color}"/>'
            f'<text x="{lx + 16:.1f}" y="{ly}" font-size="12">{escape(item.label)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
