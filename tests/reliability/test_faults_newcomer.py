"""Faults a newcomer hit (issue: fail fast on bad params): each is refused at load, through the
real `lfp` command, with one line naming the file and the key, exit 2, in seconds, nothing written.

On the code before this fix: `tasks: []` was accepted (and `lfp report` overwrote report.md with
empty tables), `.nan`/`.inf` numbers, duplicate YAML keys and a held-out fraction of 1.0 were
accepted (NaN ran 457 s before a sklearn traceback), and `source: tinyy` spent 63 s on hub retries.
"""

from __future__ import annotations

import time

import pytest
from rel_helpers import assert_user_error, files_under, run_lfp, write_params

CASES = {
    "no_tasks": (lambda d: d.update(tasks=[]), ["report"], "'tasks' must list at least one task"),
    "nan_fraction": (lambda d: d["probe"].update(test_fraction=float("nan")), ["report"],
                     "'probe.test_fraction' must be a finite number"),
    "inf_learning_rate": (lambda d: d["sae"].update(learning_rate=float("inf")), ["report"],
                          "'sae.learning_rate' must be a finite number"),
    "heldout_fraction_one": (lambda d: d["task_specs"]["hh"].update(heldout_fraction=1.0), ["prepare", "--task", "hh"],
                             "'task_specs.hh.heldout_fraction' must be < 1.0"),
    "test_fraction_one": (lambda d: d["probe"].update(test_fraction=1.0), ["report"], "'probe.test_fraction' must be < 1.0"),
    "model_source_typo": (lambda d: d["model_specs"]["tiny"].update(source="tinyy"), ["base", "--model", "tiny"],
                          "'model_specs.tiny.source' is 'tinyy'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_at_load_with_one_line(tmp_path, case):
    mutate, args, needle = CASES[case]
    params = write_params(tmp_path, mutate)
    before = files_under(tmp_path)
    start = time.perf_counter()
    proc = run_lfp(args, tmp_path, timeout=60)
    line = assert_user_error(proc, args[0], needle)
    assert str(params.name) in line
    assert time.perf_counter() - start < 30  # refused at load, not after minutes of work
    assert files_under(tmp_path) == before


def test_duplicate_yaml_key_is_refused_with_its_line(tmp_path):
    params = write_params(tmp_path)
    text = params.read_text(encoding="utf-8")
    params.write_text(text + "seed: 1\n", encoding="utf-8")  # `seed` is already set above
    line_no = len(text.splitlines()) + 1
    proc = run_lfp(["report"], tmp_path, timeout=60)
    assert_user_error(proc, "report", f"{params.name}:{line_no}", "duplicate key 'seed'")


def test_explain_with_endpoint_down_fails_before_any_work(tmp_path):
    """`explain.backend: openai` with nothing listening: one line naming the endpoint, before the
    stage reads a model or a corpus (none exist here, so reaching them would fail differently)."""
    write_params(tmp_path, lambda d: d["explain"].update(backend="openai"))
    env = {"LFP_LLM_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "sk-test-not-a-real-key"}
    (tmp_path / "reports/runs/tiny-vader").mkdir(parents=True)
    (tmp_path / "reports/runs/tiny-vader/divergence.json").write_text('{"chosen_layers": [0, 1]}', encoding="utf-8")
    (tmp_path / "models/sae/tiny-vader/finetuned").mkdir(parents=True)
    (tmp_path / "models/sae/tiny-vader/finetuned/matching.json").write_text(
        '{"layers": {"0": {"ranked_features": [0], "max_cos": [0.5]}, "1": {"ranked_features": [0], "max_cos": [0.5]}}}',
        encoding="utf-8")
    start = time.perf_counter()
    proc = run_lfp(["explain", "--model", "tiny", "--task", "vader"], tmp_path, env, timeout=60)
    line = assert_user_error(proc, "explain", "127.0.0.1:9", "unreachable")
    assert "sk-test" not in line
    assert time.perf_counter() - start < 30
