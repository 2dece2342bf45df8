"""What every verdict shares: the verdict words, the metrics-file type and the "not run" check
(lfp.report.verdicts builds the table; lfp.report.learning_verdicts judges whether fine-tunes learned)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lfp.report.format import num

PASSED, FAILED, NOT_RUN, NA = "passed", "failed", "not run", "n/a"
Metrics = Mapping[str, Any] | None  # one metrics JSON file, None where it is missing or unreadable
Judged = tuple[str, str]  # (verdict, evidence)


def missing(m: Metrics, file: str, *keys: str) -> Judged | None:
    """('not run', what is missing) if the file or any key is absent or not a number, else None."""
    if m is None:
        return NOT_RUN, f"no {file}"
    absent = [k for k in keys if num(m, k) is None]
    return (NOT_RUN, f"`{'`, `'.join(absent)}` missing from {file}") if absent else None
