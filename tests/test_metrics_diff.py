"""lfp_dev.metrics_diff: a refactor's outputs compared to the committed ones, timing fields aside."""

from __future__ import annotations

import json
from pathlib import Path

from lfp_dev.metrics_diff import main, tree_differences


def _tree(root: Path, metrics: dict, csv: str = "w,v\na,1\n") -> Path:
    run = root / "reports" / "runs" / "tiny-vader"
    run.mkdir(parents=True)
    (run / "lfp.json").write_text(json.dumps(metrics))
    (run / "words.csv").write_text(csv)
    return root


def test_timing_fields_may_differ_numbers_may_not(tmp_path: Path) -> None:
    before = _tree(tmp_path / "a", {"tau": 0.1, "train_seconds": 3.0, "nested": {"train_tokens_per_s": 9}})
    same = _tree(tmp_path / "b", {"tau": 0.1, "train_seconds": 4.5, "nested": {"train_tokens_per_s": 7}})
    assert tree_differences(before, same) == []
    assert main([str(before), str(same)]) == 0
    moved = _tree(tmp_path / "c", {"tau": 0.1000001, "train_seconds": 3.0, "nested": {"train_tokens_per_s": 9}}, "w,v\na,2\n")
    assert tree_differences(before, moved) == [
        "reports/runs/tiny-vader/lfp.json: tau: 0.1 -> 0.1000001",
        "reports/runs/tiny-vader/words.csv: contents differ",
    ]
    assert main([str(before), str(moved)]) == 1


def test_a_file_on_one_side_only_is_a_difference(tmp_path: Path) -> None:
    before = _tree(tmp_path / "a", {"tau": 0.1})
    after = _tree(tmp_path / "b", {"tau": 0.1})
    (after / "reports" / "runs" / "tiny-vader" / "extra.json").write_text("{}")
    assert tree_differences(before, after) == ["reports/runs/tiny-vader/extra.json: only in AFTER"]
