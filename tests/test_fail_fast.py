"""Failures cost seconds: cheap checks run at params load, and a stage's error says how to recover.

Why: a planted word missing from the VADER lexicon used to fail only inside `measure`, after
measure_pairs had re-run for minutes; and a failed stage under `dvc repro` leaves its outputs
deleted (DVC removes them before running it) without saying `dvc checkout` brings them back.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from lfp.cli import main
from lfp.core.params_load import load_params
from lfp.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _profile(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    mutate(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_planted_word_outside_the_lexicon_fails_at_load(tmp_path: Path) -> None:
    path = _profile(tmp_path, lambda d: d["measure"]["planted_words"].__setitem__(3, "notaword"))
    start = time.perf_counter()
    with pytest.raises(ConfigError) as exc:
        load_params(path)
    assert time.perf_counter() - start < 5
    assert str(exc.value) == f"{path}: 'measure.planted_words[3]' is 'notaword', which is not in the VADER lexicon"


def test_planted_word_case_hint(tmp_path: Path) -> None:
    path = _profile(tmp_path, lambda d: d["measure"]["planted_words"].__setitem__(0, "Good"))
    with pytest.raises(ConfigError, match=r"'measure.planted_words\[0\]' is 'Good'.*\(the lexicon has 'good'\)"):
        load_params(path)


def test_planted_words_unchecked_without_lexicon_tasks(tmp_path: Path) -> None:
    def mutate(d: dict) -> None:
        d["measure"]["tasks"] = []
        d["measure"]["planted_words"] = ["notaword"]

    assert load_params(_profile(tmp_path, mutate)).measure.planted_words == ["notaword"]


def test_measure_needs_the_probe_base_control(tmp_path: Path) -> None:
    path = _profile(tmp_path, lambda d: d["probe"].update(base_control=False))
    with pytest.raises(ConfigError, match=r"'probe.base_control' must be true when 'measure.tasks' is not empty"):
        load_params(path)


def test_stage_error_under_dvc_names_the_recovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = _profile(tmp_path, lambda d: d["measure"]["planted_words"].__setitem__(0, "notaword"))
    monkeypatch.setenv("DVC_STAGE", "measure@tiny-vader")  # what `dvc repro` sets for a stage's command
    assert main(["--params", str(path), "measure", "--model", "tiny", "--task", "vader"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("lfp measure: error: ")
    assert "'measure.planted_words[0]' is 'notaword'" in err
    assert err.endswith("`dvc checkout measure@tiny-vader` restores the last committed ones)")


def test_stage_error_outside_dvc_has_no_dvc_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = _profile(tmp_path, lambda d: d["measure"]["planted_words"].__setitem__(0, "notaword"))
    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert main(["--params", str(path), "measure", "--model", "tiny", "--task", "vader"]) == 2
    assert "dvc checkout" not in capsys.readouterr().err


def test_raw_must_contain_what_the_task_reads(tmp_path: Path) -> None:
    path = _profile(tmp_path, lambda d: d["task_specs"]["hh"].update(raw="data/raw/hh-rlhf/harmless-base"))
    with pytest.raises(ConfigError, match=r"'task_specs.hh.raw' is 'data/raw/hh-rlhf/harmless-base', which does not contain "
                                          r"data/raw/hh-rlhf/helpful-base"):
        load_params(path)
    path = _profile(tmp_path, lambda d: d["task_specs"]["vader"].update(raw="data/raw"))  # wider is allowed
    assert load_params(path).task_specs["vader"].raw == "data/raw"


def test_prepare_runs_for_a_task_spec_outside_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """dvc.yaml's prepare runs once per task_specs entry: the CLI accepts those names for prepare only."""
    path = _profile(tmp_path, lambda d: d.update(tasks=["vader", "hh"]) or d["measure"].update(preference_tasks=["hh"]))
    assert main(["--params", str(path), "finetune", "--model", "tiny", "--task", "toxic"]) == 2
    assert "--task 'toxic' is not in params `tasks`" in capsys.readouterr().err
