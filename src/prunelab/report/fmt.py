"""Number formatting shared by every report section: `render.py` and the sections built
outside it (which render imports, so they cannot import it)."""

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
    """A report section as plain data: render.py turns it into its Section."""
    return {"title": title, "text": [], "tables": [], "images": []}
