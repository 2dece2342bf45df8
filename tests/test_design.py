"""docs/DESIGN.md stays true: every path its "Where a change goes" table names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "lfp"


def change_table() -> list[str]:
    text = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    section = text.split("### Where a change goes", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| change")]


def test_the_change_table_names_only_paths_that_exist() -> None:
    rows = change_table()
    assert len(rows) >= 6, "the table lost its rows"
    named = {p for row in rows for p in re.findall(r"`([\w./<>-]+\.py|[\w<>-]+/)`", row)}
    assert named, "no paths found in the table"
    missing = []
    for rel in sorted(named):
        if "<name>" in rel:
            ok = any((PKG / rel).parent.glob("*.py"))
        elif "<kind>" in rel:
            kinds = [d for d in (PKG / "tasks").iterdir() if d.is_dir() and (d / "kind.py").is_file()]
            ok = all((PKG / rel.replace("<kind>", d.name)).exists() for d in kinds) and kinds
        else:
            ok = (PKG / rel).exists()
        if not ok:
            missing.append(rel)
    assert missing == []
