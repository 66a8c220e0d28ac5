"""The trend chart: an inline SVG, so the report stays one self-contained file (no network, no script).

Two panels over the same runs, oldest on the left:

- above, the requirements that failed, stacked by severity (critical at the
  bottom, where a change is easiest to see), and those that could not be
  evaluated on top;
- below, the requirements that passed, on their own scale: passes usually
  outnumber failures tenfold, and on one shared axis every failure bar would be
  a sliver.

Each bar carries a ``<title>`` (the browser shows it on hover) with every number
of that run, and the caller prints the same numbers as a table for those who do
not hover.
"""

from __future__ import annotations

import datetime as dt
from html import escape

from hybridtrust.catalog import SEVERITIES
from hybridtrust.history import RunPoint

COLOURS = {
    "critical": "#b00020",
    "high": "#d35400",
    "medium": "#b8860b",
    "low": "#607d8b",
    "errored": "#6d4c41",
    "passed": "#2e7d32",
}
_SLOT = 30
_BAR = 18
_LEFT = 44
_LEGEND = 22
_TOP_PANEL = 130
_GAP = 16
_BOTTOM_PANEL = 46
_LABELS = 30


def _when(started: str) -> tuple[str, str]:
    try:
        moment = dt.datetime.fromisoformat(started)
    except ValueError:
        return (started[:10] or "?", "")
    return (f"{moment:%m-%d}", f"{moment:%H:%M}")


def _describe(point: RunPoint) -> str:
    failed = ", ".join(f"{point.failed.get(s, 0)} {s}" for s in SEVERITIES)
    text = (
        f"{point.started}: failed {point.total('failed')} ({failed}); could not be evaluated {point.total('errored')}"
    )
    text += f"; passed {point.total('passed')}"
    return text + (f"; waived {point.waived}" if point.waived else "")


def trend_svg(points: list[RunPoint], title: str = "Requirements per run") -> str:
    """The chart for these runs (oldest first), as an ``<svg>`` element."""
    legend: list[str] = []
    x = _LEFT
    for name in (*SEVERITIES, "errored", "passed"):
        label = "could not be evaluated" if name == "errored" else name
        legend.append(f'<rect x="{x}" y="6" width="10" height="10" fill="{COLOURS[name]}"/>')
        legend.append(f'<text x="{x + 13}" y="15">{escape(label)}</text>')
        x += 19 + 6 * len(label)
    width = max(_LEFT + _SLOT * max(len(points), 1) + 10, x)
    height = _LEGEND + _TOP_PANEL + _GAP + _BOTTOM_PANEL + _LABELS
    top_max = max([p.total("failed") + p.total("errored") for p in points] + [1])
    bottom_max = max([p.total("passed") for p in points] + [1])
    top_base = _LEGEND + _TOP_PANEL
    bottom_base = top_base + _GAP + _BOTTOM_PANEL
    parts = [
        f'<svg class="ht-trend" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        'font-family="sans-serif" font-size="10">',
        f"<title>{escape(title)}</title>",
        "<desc>Above: requirements that failed, by severity, and that could not be evaluated. "
        "Below: requirements that passed. One bar per run, oldest on the left.</desc>",
        *legend,
    ]
    for base, panel, maximum, caption in (
        (top_base, _TOP_PANEL, top_max, "failing"),
        (bottom_base, _BOTTOM_PANEL, bottom_max, "passing"),
    ):
        parts.append(
            f'<line x1="{_LEFT - 4}" y1="{base}" x2="{width - 6}" y2="{base}" stroke="#999" stroke-width="1"/>'
        )
        parts.append(f'<line x1="{_LEFT - 4}" y1="{base - panel}" x2="{width - 6}" y2="{base - panel}" stroke="#eee"/>')
        parts.append(f'<text x="{_LEFT - 6}" y="{base - panel + 8}" text-anchor="end">{maximum}</text>')
        parts.append(f'<text x="{_LEFT - 6}" y="{base}" text-anchor="end">0</text>')
        parts.append(
            f'<text x="10" y="{base - panel / 2}" text-anchor="middle" '
            f'transform="rotate(-90 10 {base - panel / 2})">{caption}</text>'
        )
    for index, point in enumerate(points):
        left = _LEFT + index * _SLOT + (_SLOT - _BAR) / 2
        parts.append(f"<g><title>{escape(_describe(point))}</title>")
        y = float(top_base)
        for name in (*SEVERITIES, "errored"):
            count = point.total("errored") if name == "errored" else point.failed.get(name, 0)
            if count:
                h = _TOP_PANEL * count / top_max
                y -= h
                parts.append(
                    f'<rect class="ht-bar-{name}" x="{left:.1f}" y="{y:.1f}" width="{_BAR}" height="{h:.1f}" '
                    f'fill="{COLOURS[name]}"/>'
                )
        passed = point.total("passed")
        if passed:
            h = _BOTTOM_PANEL * passed / bottom_max
            parts.append(
                f'<rect class="ht-bar-passed" x="{left:.1f}" y="{bottom_base - h:.1f}" width="{_BAR}" '
                f'height="{h:.1f}" fill="{COLOURS["passed"]}"/>'
            )
        parts.append("</g>")
        day, time = _when(point.started)
        centre = left + _BAR / 2
        weight = ' font-weight="bold"' if index == len(points) - 1 else ""
        parts.append(f'<text x="{centre:.1f}" y="{bottom_base + 12}" text-anchor="middle"{weight}>{escape(day)}</text>')
        parts.append(
            f'<text x="{centre:.1f}" y="{bottom_base + 24}" text-anchor="middle" fill="#555">{escape(time)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
