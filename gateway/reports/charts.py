"""The report's charts: matplotlib figures rendered to SVG, embedded in the page as data URIs (no script, no CDN).

matplotlib's object API (`Figure`, no pyplot): no global figure state, nothing drawn on a screen.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from datetime import date
from typing import Any

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from gateway.reports.data import Total

COST_COLOUR = "#c2562f"
TOKENS_COLOUR = "#3b6ea8"
LABEL_CHARS = 32

# Text as text (small, selectable); the same ids on every run; and a `$` in a model name a caller chose is a
# dollar sign, not the start of mathtext.
_STYLE: dict[Any, Any] = {  # matplotlib types the keys as a Literal of every rc name
    "svg.fonttype": "none",
    "svg.hashsalt": "claude-gateway-report",
    "text.parse_math": False,
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def _short(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"


def _dollars(value: float, _: object = None) -> str:
    return f"${value:,.2f}" if value < 10 else f"${value:,.0f}"


def _tokens(value: float, _: object = None) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:,.1f}{unit}"
    return f"{value:,.0f}"


def _svg_data_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def by_day(days: Sequence[date], cost: Sequence[float], tokens: Sequence[int]) -> str:
    """Cost and tokens per day, every day of the period (days without use at zero)."""
    with matplotlib.rc_context(_STYLE):
        figure = Figure(figsize=(11, 3.2))
        left, right = figure.subplots(1, 2)
        labels = [f"{day:%d %b}" for day in days]
        for axes, values, colour, formatter, title in (
            (left, cost, COST_COLOUR, _dollars, "Cost per day (USD, list prices)"),
            (right, tokens, TOKENS_COLOUR, _tokens, "Tokens per day"),
        ):
            axes.bar(range(len(days)), values, color=colour)
            axes.set_title(title, loc="left")
            axes.yaxis.set_major_formatter(FuncFormatter(formatter))
            step = max(1, len(days) // 10)
            axes.set_xticks(range(0, len(days), step), labels[::step], rotation=45, ha="right")
        return _svg_data_uri(figure)


def ranked(totals: Sequence[Total], what: str, limit: int = 15) -> str:
    """Cost and tokens per key (group, person, model), the largest `limit` by cost, largest at the top."""
    shown = list(totals[:limit])[::-1]
    labels = [_short(total.key) for total in shown]
    with matplotlib.rc_context(_STYLE):
        figure = Figure(figsize=(11, 0.6 + 0.32 * max(len(shown), 2)))
        left, right = figure.subplots(1, 2, sharey=True)
        for axes, values, colour, formatter, title in (
            (left, [t.cost_usd for t in shown], COST_COLOUR, _dollars, f"Cost by {what} (USD)"),
            (right, [t.tokens for t in shown], TOKENS_COLOUR, _tokens, f"Tokens by {what}"),
        ):
            axes.barh(range(len(shown)), values, color=colour)
            axes.set_title(title, loc="left")
            axes.xaxis.set_major_locator(MaxNLocator(5))
            axes.xaxis.set_major_formatter(FuncFormatter(formatter))
        left.set_yticks(range(len(shown)), labels)
        return _svg_data_uri(figure)
