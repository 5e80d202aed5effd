"""Fractions shown as percentages without ever showing a rate as perfect, or as nil, when it is not."""

from __future__ import annotations

_MAX_DECIMALS = 12


def percent(value: float | None, decimals: int = 2) -> str:
    """`value` (a fraction) as a percentage with `decimals` decimals, more where fewer would show 100% or 0% for a value that is not."""
    if value is None:
        return "n/a"
    text = f"{100 * value:.{decimals}f}"
    # A target of 0.999999 shown as "100.00%" claims a perfection nobody asked for; an escape rate of 1e-5 as "0.00%" hides it.
    while decimals < _MAX_DECIMALS and ((value < 1.0 and float(text) >= 100.0) or (value > 0.0 and float(text) <= 0.0)):
        decimals += 1
        text = f"{100 * value:.{decimals}f}"
    return text + "%"
