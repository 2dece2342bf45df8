"""`python -m lfp_dev.metrics_diff BEFORE AFTER`: are two pipeline outputs the same numbers?

A refactor must leave `make repro`'s metrics byte-identical on the same machine; wall-clock fields
(`*_seconds`, `*_per_s`, ...) are the only ones allowed to differ. Compares every JSON and CSV under
`reports/runs/` plus `reports/headline.json` of two project trees (e.g. `git archive REV reports | tar -x`
into one, a fresh `make repro` in the other) and prints each difference: key path, before, after.
Exit status 1 when anything but a timing field differs, or a file exists on one side only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Iterator

TIMING_KEY = re.compile(r"(seconds|_per_s|_time|elapsed|wall_s)$")


def _leaves(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _leaves(value, f"{prefix}[{i}]")
    else:
        yield prefix, obj


def json_differences(before: Any, after: Any) -> list[tuple[str, Any, Any]]:
    """(key path, before, after) for every leaf that differs, timing fields aside."""
    a, b = dict(_leaves(before)), dict(_leaves(after))
    out = []
    for key in sorted(set(a) | set(b)):
        if TIMING_KEY.search(key.split(".")[-1].split("[")[0]):
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            out.append((key, a.get(key, "<absent>"), b.get(key, "<absent>")))
    return out


def compared_files(root: Path) -> set[str]:
    runs = root / "reports" / "runs"
    files = {p.relative_to(root).as_posix() for p in runs.rglob("*") if p.suffix in (".json", ".csv", ".jsonl")}
    if (root / "reports" / "headline.json").is_file():
        files.add("reports/headline.json")
    return files


def tree_differences(before: Path, after: Path) -> list[str]:
    lines = []
    fb, fa = compared_files(before), compared_files(after)
    for rel in sorted(fb ^ fa):
        lines.append(f"{rel}: only in {'BEFORE' if rel in fb else 'AFTER'}")
    for rel in sorted(fb & fa):
        tb, ta = (before / rel).read_text(encoding="utf-8"), (after / rel).read_text(encoding="utf-8")
        if tb == ta:
            continue
        if rel.endswith(".json"):
            lines += [f"{rel}: {key}: {x!r} -> {y!r}" for key, x, y in json_differences(json.loads(tb), json.loads(ta))]
        else:
            lines.append(f"{rel}: contents differ")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    lines = tree_differences(args.before, args.after)
    n = len(compared_files(args.before) | compared_files(args.after))
    print("\n".join(lines) if lines else f"identical: {n} files (timing fields aside)")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
