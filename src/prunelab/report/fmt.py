"""Number formatting shared by every report section (`report/sections.py`)."""

from __future__ import annotations

import math


def num(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def ci(pair, digits: int = 2) -> str:
    low, high = pair
    if not (math.isfinite(low) and math.isfinite(high)):
        return "–"
    return f"[{num(low, digits)}, {num(high, digits)}]"


def pct(x) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.0%}"


def section(title: str) -> dict:
    """A report section as plain data (`sections.as_section` turns it into a Section)."""
    return {"title": title, "text": [], "tables": [], "images": []}
