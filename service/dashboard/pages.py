"""The dashboard's HTML: Jinja2 templates with autoescaping on, and the filters they use.

Everything a row holds (prompt, error, URLs, ids) is text from apps and providers, so
every value goes through Jinja's escaping; no template marks anything ``safe``. A URL
goes into ``src`` or ``href`` only through ``http_url``: http(s) with a host, or
nothing (a ``javascript:`` or ``data:`` URL in a row is never a link).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from jinja2 import Environment, PackageLoader, StrictUndefined

from service.core.job import Stage
from service.database.dashboard import Overview, RowView

CHART_WIDTH = 480
CHART_HEIGHT = 96


def http_url(value: str | None) -> str | None:
    """``value`` if it is an http(s) URL with a host, else None."""
    if not value:
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    return value if parts.scheme in ("http", "https") and parts.hostname else None


def when(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def clock(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%H:%M:%S")


def took(start: datetime | None, end: datetime | None) -> str:
    """The time from ``start`` to ``end`` in a few words (``1 min 30 s``)."""
    if start is None or end is None:
        return ""
    seconds = max(0, int((end - start).total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


def age(start: datetime | None, now: datetime) -> str:
    """``took`` to the minute: the overview then changes once a minute, not every
    second, so the live feed sends it only when something did change."""
    if start is None:
        return "—"
    if (now - start).total_seconds() < 60:
        return "under 1 min"
    whole = timedelta(minutes=(now - start).total_seconds() // 60)
    return took(start, start + whole)


def size(value: int | None) -> str:
    if value is None:
        return "—"
    amount = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if amount < 1000 or unit == "GB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    raise AssertionError("unreachable")


def usd(value: float | None) -> str:
    return "—" if value is None else f"${value:,.2f}"


def chart(per_hour: list[tuple[datetime, int]]) -> dict[str, Any]:
    """Bars of completions per hour, in the SVG's own units (the template draws them)."""
    most = max((n for _, n in per_hour), default=0) or 1
    width = CHART_WIDTH / max(len(per_hour), 1)
    bars = []
    for index, (hour, count) in enumerate(per_hour):
        height = round(count / most * (CHART_HEIGHT - 14), 1)
        bars.append(
            {
                "x": round(index * width + 1, 1),
                "y": round(CHART_HEIGHT - 12 - height, 1),
                "width": round(width - 2, 1),
                "height": height,
                "label": f"{hour:%H}:00 UTC: {count}",
                "tick": f"{hour:%H}" if index % 6 == 0 else "",
                "tick_x": round(index * width + width / 2, 1),
            }
        )
    return {"bars": bars, "width": CHART_WIDTH, "height": CHART_HEIGHT, "most": most}


class Pages:
    """Renders the dashboard's pages and the fragments the live feed sends."""

    def __init__(self) -> None:
        self.env = Environment(
            loader=PackageLoader("service.dashboard", "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(http_url=http_url, when=when, clock=clock, size=size, usd=usd)
        self.env.globals.update(took=took, age=age, chart=chart, stages=[s.value for s in Stage])

    def render(self, name: str, context: Mapping[str, Any]) -> str:
        return self.env.get_template(name).render(context)

    def overview(self, overview: Overview) -> str:
        return self.render("_overview.html", {"o": overview})

    def card(self, row: RowView) -> str:
        return self.render("_row.html", {"row": row})
