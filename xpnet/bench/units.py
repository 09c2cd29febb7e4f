"""Times, ratios and sizes as the report prints them (three significant digits, SI units)."""

from __future__ import annotations

import math

__all__ = ["cache_bytes", "fmt_bytes", "fmt_ratio", "fmt_time"]


def fmt_time(seconds: float | None) -> str:
    """0.0123 -> '12.3 ms' (s, ms, µs or ns); 'n/a' for None or a non-finite time."""
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.3g} µs"
    return f"{seconds * 1e9:.3g} ns"


def fmt_ratio(r: float | None) -> str:
    """2.5 -> '2.5×'; 'n/a' for None."""
    return "n/a" if r is None else f"{r:.3g}×"


def fmt_bytes(n: float) -> str:
    """2097152 -> '2.1 MB' (decimal units, as the cache sizes are quoted)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def cache_bytes(text: str | None) -> int | None:
    """'2048K' -> 2097152 (sysfs cache sizes)."""
    if not text:
        return None
    text = text.strip().upper()
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    try:
        return int(float(text.rstrip("KMG")) * scale)
    except ValueError:
        return None
