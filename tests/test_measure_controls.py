"""The measure stage's new parts on cases with known answers: the seed interval, repeated word
splits, the difference probe (finds a pattern only fine-tuning added), per-word errors, and the
control tasks' files (written with the measured task's kind of keys, logged with a prefix)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from lfp.measure import metrics
from lfp.core import paths
from lfp.tasks.lexicon_rl.learned import LearnedValues
from lfp.measure.controls import (
    CONTROL_CSV_FIELDS,
    control_metrics,
    control_rows,
    planted_summary,
    shuffled_verdict,
    write_control,
)
from lfp.tasks.lexicon_rl.word_probes import (
    HeldoutProbe,
    error_vs_learned,
    heldout_probe,
    score_words,
    split_seed_taus,
    tau_ci,
    word_split,
)

OFFSETS, WIDTHS = [0, 8], [8, 8]


def test_mean_t_interval_on_known_numbers():
    mean, lo, hi = metrics.mean_t_interval([1.0, 2.0, 3.0])
    half = stats.t.ppf(0.975, 2) * 1.0 / np.sqrt(3)  # sd 1, n 3
    assert (mean, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert half == pytest.approx(2.4841377)
    one = metrics.mean_t_interval([0.5])
    assert one[0] == 0.5 and np.isnan(one[1]) and np.isnan(one[2])  # one seed: no interval
    assert metrics.mean_t_interval([1.0, np.nan, 3.0])[0] == 2.0  # an undefined τ is skipped


def rows(n_words: int = 60, reps: int = 4, pre: float = 0.0, learned: float = 0.0, seed: int = 0):
    """Occurrence rows of words: the base model's codes hold word identity (+ `pre` x value, a
    pattern present before fine-tuning); the fine-tuned codes add `learned` x value on top."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(-4, 4, n_words)
    words = np.repeat(np.array([f"w{i}" for i in range(n_words)], dtype=object), reps)
    v = np.repeat(values, reps)
    identity = np.repeat(rng.normal(size=(n_words, 16)), reps, axis=0)
    d_pre, d_learned = rng.normal(size=16), rng.normal(size=16)
    base = identity + pre * np.outer(v, d_pre) + rng.normal(scale=0.3, size=(len(v), 16))
    finetuned = base + learned * np.outer(v, d_learned) + rng.normal(scale=0.05, size=(len(v), 16))
    return words, v, finetuned, base


def probe_tau(codes: np.ndarray, words: np.ndarray, v: np.ndarray, seed: int = 0) -> float:
    is_test = word_split(words, 0.3, seed)
    return heldout_probe(codes, v, words, v, is_test, OFFSETS, WIDTHS, 1.0).scores.tau


def test_difference_probe_finds_a_pattern_only_fine_tuning_added():
    words, v, ft, base = rows(learned=1.0)
    assert probe_tau(ft - base, words, v) > 0.8  # the change carries the planted value
    assert abs(probe_tau(base, words, v)) < 0.3  # the base model knew nothing of it


def test_difference_probe_ignores_a_pattern_the_base_already_had():
    words, v, ft, base = rows(pre=1.0, learned=0.0)
    assert probe_tau(ft, words, v) > 0.8 and probe_tau(base, words, v) > 0.8  # both encode it
    assert abs(probe_tau(ft - base, words, v)) < 0.3  # fine-tuning changed nothing: no pattern


def test_split_seed_taus_repeat_the_probe_over_word_splits():
    words, v, ft, base = rows(pre=0.0, learned=1.0)
    seeds = [0, 1, 2]
    taus = split_seed_taus({"finetuned": (ft, v), "base": (base, v), "difference": (ft - base, v)}, words, v,
                           OFFSETS, WIDTHS, 0.3, seeds, 1.0)
    assert set(taus) == {"finetuned", "base", "difference", "diff"}
    assert all(len(t) == len(seeds) for t in taus.values())
    assert taus["finetuned"][1] == pytest.approx(probe_tau(ft, words, v, seed=1))
    assert np.allclose(taus["diff"], np.array(taus["finetuned"]) - np.array(taus["base"]))
    assert len(set(taus["finetuned"])) == len(seeds)  # the splits differ
    assert min(taus["difference"]) > 0.8
    assert not (word_split(words, 0.3, 0) == word_split(words, 0.3, 1)).all()


def test_tau_ci_brackets_the_estimate():
    words, v, ft, _ = rows(learned=1.0)
    is_test = word_split(words, 0.3, 0)
    s = heldout_probe(ft, v, words, v, is_test, OFFSETS, WIDTHS, 1.0).scores
    lo, hi = tau_ci(s, 200, seed=0)
    assert lo <= s.tau <= hi and hi - lo < 0.3


def test_error_vs_learned_is_zero_for_a_perfect_probe():
    words = np.array(["a", "a", "b", "c", "d"], dtype=object)
    values = np.array([-4.0, -4.0, 0.0, 2.0, 4.0])
    probe = HeldoutProbe(score_words(words, values, values), values.copy())  # raw predictions = the values
    got_words, err, learned = error_vs_learned(probe, words, values, {"a": 0.1, "b": 0.2, "d": -0.3}, 0.0, 100.0)
    assert got_words == ["a", "b", "d"]  # 'c' has no learned value
    assert err == pytest.approx([0.0, 0.0, 0.0]) and learned.tolist() == [0.1, 0.2, -0.3]


def lv(values: dict[str, float]) -> LearnedValues:
    words = sorted(values)
    x = np.array([values[w] for w in words])
    return LearnedValues(words, x, x - 0.1, x + 0.1, np.full(len(words), 3))


def lexicon_and_words(n: int = 200, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    return {f"w{i}": float(v) for i, v in enumerate(rng.uniform(-4, 4, n))}


def test_control_metrics_against_lexicon_and_reward():
    lex = lexicon_and_words()
    rng = np.random.default_rng(2)  # a permutation whose τ with the lexicon is ≈ 0 (0.01, p 0.84)
    shuffled = dict(zip(lex, rng.permutation(list(lex.values()))))
    learned = lv({w: 0.1 * shuffled[w] for w in lex})  # it learned the shuffled reward, nothing of the lexicon
    m = control_metrics("shuffled", "vader", learned, lex, shuffled, probe_shift=None, n_boot=100, seed=0)
    assert m["control_of"] == "vader" and m["reward"] == "shuffled" and m["task"] == "vader-shuffled"
    assert m["learned_value_tau_reward"] == pytest.approx(1.0)
    assert m["learned_value_tau"] == pytest.approx(metrics.kendall(learned.value, np.array([lex[w] for w in learned.words]))[0])
    assert m["learned_value_tau_ci_low"] <= 0.0 <= m["learned_value_tau_ci_high"]
    assert shuffled_verdict(m) == {"detected": False, "shuffled_detected": False}
    tracks = control_metrics("shuffled", "vader", lv(dict(lex)), lex, shuffled, probe_shift=dict(lex), n_boot=100, seed=0)
    assert shuffled_verdict(tracks)["detected"] is True  # learned values that follow the lexicon: fooled
    assert tracks["probe_shift_tau"] == pytest.approx(1.0) and "probe_shift_tau_reward_ci_low" in tracks


def test_planted_summary_detects_the_plant_and_not_the_unplanted_fine_tune():
    lex = {w: abs(v) + 0.5 for w, v in lexicon_and_words(60).items()}  # all positive
    planted = {"w0", "w1", "w2", "w3", "w4", "w5"}
    rng = np.random.default_rng(2)
    planted_lv = {w: (-1.0 if w in planted else 0.0) + 0.1 * rng.normal() for w in lex}
    main_lv = {w: 0.1 * rng.normal() for w in lex}
    s = planted_summary(planted_lv, main_lv, planted_lv, main_lv, planted, lex, n_perm=200, seed=0)
    assert s["planted_auc"] == 1.0 and s["planted_p"] < 0.01 and s["planted_detected"] is True
    assert s["planted_probe_auc"] == 1.0 and s["planted_n"] == 6 and s["planted_n_other"] == 54
    assert s["planted_p_base"] > 0.01 and "planted_probe_p_base" in s


class FakeRun:
    """The two calls a control makes on the stage's MLflow run, recorded."""

    def __init__(self) -> None:
        self.metrics: dict[str, Any] = {}
        self.artifacts: list[tuple[str, str | None]] = []

    def log_metrics(self, m: dict[str, Any], step: int | None = None) -> None:
        from lfp.core.tracking_params import numeric_metrics

        self.metrics.update(numeric_metrics(m))

    def log_artifact(self, path: Any, artifact_path: str | None = None) -> None:
        assert Path(path).is_file()
        self.artifacts.append((str(path), artifact_path))


def test_control_files_are_written_with_the_expected_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    lex = lexicon_and_words(30)
    planted_lex = {w: -v if w == "w1" else v for w, v in lex.items()}
    learned = lv({w: 0.1 * v for w, v in planted_lex.items()})
    m = control_metrics("planted", "vader", learned, lex, planted_lex, probe_shift={"w1": -0.2}, n_boot=50, seed=0)
    m.update(planted_summary(learned.by_word(), learned.by_word(), None, None, {"w1"}, lex, 50, 0))
    run = FakeRun()
    files = write_control(run, "tiny", "vader", "planted", m, control_rows(learned, lex, planted_lex, {"w1"}, {"w0": 0.3}, {"w1": -0.2}))
    assert files == [Path("reports/runs/tiny-vader-planted/lfp.json"), Path("reports/runs/tiny-vader-planted/lfp_words.csv")]
    saved = json.loads(files[0].read_text())
    for key in ("control_of", "reward", "learned_value_tau", "learned_value_tau_p", "learned_value_tau_ci_low",
                "learned_value_tau_ci_high", "learned_value_tau_reward", "learned_value_tau_reward_ci_low",
                "planted_auc", "planted_p", "planted_auc_base", "seeds", "n_words"):
        assert key in saved, key
    assert saved["control_of"] == "vader" and saved["reward"] == "planted"
    assert saved["learned_value_tau_reward"] == pytest.approx(1.0)
    # MLflow: the same numbers under the control task's prefix; the files as artifacts in its folder
    assert run.metrics["vader-planted.learned_value_tau"] == pytest.approx(saved["learned_value_tau"])
    assert {a for _, a in run.artifacts} == {"vader-planted"} and len(run.artifacts) == 2
    with open(files[1], newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert tuple(table[0]) == CONTROL_CSV_FIELDS and len(table) == 30
    w1 = next(r for r in table if r["word"] == "w1")
    assert w1["planted"] == "True" and float(w1["reward_value"]) == pytest.approx(-lex["w1"], rel=1e-5)
    assert next(r for r in table if r["word"] == "w2")["probe_shift"] == ""  # no probe view: empty, not 'nan'


def test_control_task_names():
    assert paths.control_task("vader", "planted") == "vader-planted"
    assert paths.lfp_file("tiny", paths.control_task("vader", "shuffled")) == Path("reports/runs/tiny-vader-shuffled/lfp.json")
    with pytest.raises(ValueError):
        paths.control_task("vader", "seed")


def test_report_calls_the_difference_probe_a_pattern_only_when_it_beats_the_shuffled_control():
    from lfp.report.measure import _difference_verdict, sentences, table

    key = "probe_tau_word_heldout_difference"
    m: dict[str, Any] = {key: 0.2, f"{key}_ci_low": 0.12, f"{key}_ci_high": 0.28}
    assert "cannot tell" in _difference_verdict(m)  # no null control: no claim
    m.update({f"shuffled_{key}": 0.15, f"shuffled_{key}_ci_low": 0.08, f"shuffled_{key}_ci_high": 0.22})
    assert "no evidence" in _difference_verdict(m)  # the null reaches as much
    m.update({f"shuffled_{key}": 0.0, f"shuffled_{key}_ci_low": -0.05, f"shuffled_{key}_ci_high": 0.05})
    assert "encodes the words' feedback" in _difference_verdict(m)
    assert "covers 0" in _difference_verdict({key: 0.01, f"{key}_ci_low": -0.05, f"{key}_ci_high": 0.07})
    m.update({"planted_control_task": "vader-planted", "shuffled_control_task": "vader-shuffled", "probe_seed_kind": "word_split",
              "probe_split_seeds": [0, 1, 2], f"{key}_seed_mean": 0.15, f"{key}_seed_ci_low": 0.06, f"{key}_seed_ci_high": 0.24})
    text = " ".join(sentences(m, None))
    assert "`vader-planted`" in text and "`vader-shuffled`" in text and "over 3 word splits" in text
    rows = {r[0]: r for r in table(m, None)}
    assert rows["probe τ, difference probe, mean over word splits"][1:3] == ["0.150", "[0.060, 0.240]"]
    assert sentences({}, None) and table({}, None)  # an older lfp.json without the new keys still renders
