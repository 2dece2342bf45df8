"""How the report writes numbers: one public module for every section, the verdict table and the
task kinds' own sections, so a number looks the same wherever it appears and no module imports
another's private helpers.

Two families, kept apart because the committed report depends on both: `fmt`/`ci` for table
cells (scientific notation for extreme values, `pct` as "71.0%") and `pr`/`pci`/`dec` for numbers
inside sentences (fixed decimals). Missing values are always an em dash, never a silent zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

MISSING = "—"
CHANCE = 0.5  # a probe's accuracy on balanced positive / negative elements (or chosen / rejected replies) by luck


def num(m: Mapping[str, Any], key: str) -> float | None:
    """A finite number from a metrics dict; None for a missing key, null, NaN or a non-number."""
    v = m.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        return None
    return float(v)


# ------------------------------------------------------------------------- table cells


def fmt(value: Any, digits: int = 3, pct: bool = False) -> str:
    """Numbers for humans; None/missing become an em dash, never a silent zero."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and not math.isfinite(value):
        return MISSING
    if isinstance(value, int) and not pct:
        return str(value)
    if isinstance(value, (int, float)):
        v = float(value) * (100.0 if pct else 1.0)
        if pct:
            return f"{v:.1f}%"
        if v != 0 and (abs(v) < 10 ** -digits or abs(v) >= 10**5):
            return f"{v:.2e}"
        return f"{v:.{digits}f}"
    return str(value)


def ci(m: Mapping[str, Any], key: str, pct: bool = False, digits: int = 3) -> str:
    """'[lo, hi]' of `key`'s CI in `fmt`'s style, or an em dash."""
    lo, hi = m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
    if lo is None or hi is None:
        return MISSING
    return f"[{fmt(lo, digits, pct=pct)}, {fmt(hi, digits, pct=pct)}]"


def percent(v: float | None) -> str:
    """'71.0%' of a fraction, or an em dash."""
    return MISSING if v is None else f"{100 * v:.1f}%"


def with_ci(m: Mapping[str, Any], key: str, pct: bool = True) -> str:
    """'71.0% [65.2%, 76.5%]' (or '+0.012 [-0.004, +0.030]' with pct=False), the value alone where
    it has no CI, an em dash where the value is missing."""
    v, lo, hi = num(m, key), num(m, f"{key}_ci_low"), num(m, f"{key}_ci_high")
    show = percent if pct else (lambda x: MISSING if x is None else f"{x:+.3f}")
    if v is None:
        return MISSING
    return show(v) + ("" if lo is None or hi is None else f" [{show(lo)}, {show(hi)}]")


# ------------------------------------------------------------------------- numbers in sentences


def pr(value: float | None, digits: int = 3) -> str:
    """A number in a sentence: fixed decimals, never scientific notation, no '-0.000'."""
    if value is None:
        return MISSING
    text = f"{value:.{digits}f}"
    return f"{0.0:.{digits}f}" if float(text) == 0 else text


def pci(m: Mapping[str, Any], key: str) -> str:
    """'[lo, hi]' of `key`'s CI in `pr`'s style, or an em dash."""
    lo, hi = num(m, f"{key}_ci_low"), num(m, f"{key}_ci_high")
    return MISSING if lo is None or hi is None else f"[{pr(lo)}, {pr(hi)}]"


def dec(v: Any, digits: int = 3) -> str:
    """Fixed decimals of a finite number; an em dash for anything else."""
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else MISSING


def dec_ci(m: Mapping[str, Any], key: str) -> str:
    """'[lo, hi]' of `key`'s CI in `dec`'s style, or an em dash."""
    lo, hi = num(m, f"{key}_ci_low"), num(m, f"{key}_ci_high")
    return MISSING if lo is None or hi is None else f"[{dec(lo)}, {dec(hi)}]"


def ci_after(m: Mapping[str, Any], key: str) -> str:
    """' [lo, hi]' after a number, or nothing where the CI was not measured."""
    c = dec_ci(m, key)
    return "" if c == MISSING else f" {c}"


def dec_with_ci(m: Mapping[str, Any], key: str, digits: int = 3) -> str:
    """'0.181 [0.095, 0.273]', or the number alone where it has no CI."""
    return dec(num(m, key), digits) + ci_after(m, key)


def pval(v: float | None) -> str:
    """A p-value: '< 0.001' below it, else three decimals."""
    return MISSING if v is None else "< 0.001" if v < 0.001 else dec(v, 3)


def covers_zero(m: Mapping[str, Any], key: str) -> bool | None:
    """Whether `key`'s CI contains 0 (None where the CI is missing)."""
    lo, hi = num(m, f"{key}_ci_low"), num(m, f"{key}_ci_high")
    return None if lo is None or hi is None else lo <= 0 <= hi


def versus(lo: float | None, hi: float | None, other: float | None, other_lo: float | None, other_hi: float | None) -> str:
    """'above' / 'below' / 'same' for a CI against a control (its CI where it has one), or 'unknown'."""
    if lo is None or hi is None or other is None:
        return "unknown"
    if other_lo is not None and other_hi is not None:
        return "above" if lo > other_hi else "below" if hi < other_lo else "same"
    return "above" if other < lo else "below" if other > hi else "same"


# ------------------------------------------------------------------------- the paper's numbers


def paper_models(table: Mapping[str, Any]) -> dict[str, Any]:
    """A table of data/paper_results.json without its `_note`-style keys: model -> numbers."""
    return {k: v for k, v in table.items() if not k.startswith("_")}


def span(values: list[float], pct: bool = False) -> str:
    """'a–b' (or 'a' when all equal) of published numbers; percentages are already in %."""
    lo, hi = min(values), max(values)
    unit = "%" if pct else ""
    return f"{lo:g}{unit}" if lo == hi else f"{lo:g}–{hi:g}{unit}"


def change_verb(before: float, after: float, up: str, down: str) -> str:
    """`up` / `down` / 'left unchanged' for a number that went from `before` to `after`."""
    return up if after > before else down if after < before else "left unchanged"
