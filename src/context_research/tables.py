"""Report tables: one HTML and one Markdown rendering of a pandas table for every experiment."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import pandas as pd


def fmt(x: Any, nd: int = 2, grouped: bool = False) -> str:
    """``x`` with ``nd`` decimals (and thousands separators when ``grouped``); "n/a" for None and
    NaN (float or numpy), so a missing CSV cell and a missing JSON value print alike."""
    if x is None or (isinstance(x, Real) and math.isnan(x)):
        return "n/a"
    return f"{x:,.{nd}f}" if grouped else f"{x:.{nd}f}"


def html_table(table: pd.DataFrame, decimals: int = 3) -> str:
    return table.to_html(index=False, float_format=lambda v: f"{v:.{decimals}f}", border=0, na_rep="n/a")


def markdown_table(table: pd.DataFrame, decimals: int = 3) -> str:
    """Markdown via tabulate (pandas' optional dependency); plain text where it is missing."""
    try:
        return table.to_markdown(index=False, floatfmt=f".{decimals}f")
    except ImportError:
        return table.to_string(index=False)
