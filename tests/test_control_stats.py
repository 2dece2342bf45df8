"""The statistics of issue #27 on synthetic data where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from lfp.measure import control_stats as cs
from lfp.measure.controls import planted_paired, shuffled_null, within_sign_metrics
from lfp.tasks.lexicon_rl.reward import lexicon, shuffled_lexicon


def _lexicon(n: int = 400, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.5, 3.5, n) * rng.choice([-1, 1], n)
    return {f"w{i}": float(v) for i, v in enumerate(values)}


def test_a_sign_only_value_has_no_within_sign_tau_but_a_large_overall_tau() -> None:
    lex = _lexicon()
    rng = np.random.default_rng(1)
    y = np.array(list(lex.values()))
    sign_only = np.sign(y) + 0.1 * rng.standard_normal(len(y))
    overall = cs.metrics.kendall(sign_only, y)[0]
    within, _ = cs.within_sign_tau(sign_only, y)
    assert overall > 0.4
    assert abs(within) < 0.1
    assert cs.within_sign_tau(y, y)[0] > 0.5  # the value itself keeps its order within each sign


def test_within_sign_stats_separates_the_gap_from_the_order() -> None:
    lex = _lexicon()
    rng = np.random.default_rng(2)
    learned = {w: 2.0 * np.sign(v) + 0.3 * v + rng.standard_normal() * 0.2 for w, v in lex.items()}
    s = cs.within_sign_stats(learned, lex, n_boot=200, seed=0)
    assert s["gap"] == pytest.approx(
        np.mean([v for w, v in learned.items() if lex[w] > 0]) - np.mean([v for w, v in learned.items() if lex[w] < 0]))
    assert s["gap_ci_low"] < s["gap"] < s["gap_ci_high"]
    assert s["ci_low"] > 0.3 and s["tau_positive"] > 0.3 and s["tau_negative"] > 0.3
    noise = {w: float(np.sign(v) + rng.standard_normal() * 0.01) for w, v in lex.items()}
    n = cs.within_sign_stats(noise, lex, n_boot=200, seed=0)
    assert n["ci_low"] < 0 < n["ci_high"]


def test_paired_planted_finds_a_plant_that_the_unpaired_test_misses() -> None:
    """Frequent words rise under ANY fine-tune; the plant lowers a few frequent words by less than
    that: inside the planted run they still look high (unpaired test fails), but minus the main
    run (same data and seed) only the plant is left."""
    lex = {w: abs(v) for w, v in _lexicon(200).items()}  # all positive: the planted test's comparison set
    words = sorted(lex)
    rng = np.random.default_rng(3)
    frequent = set(words[:40])
    planted = set(words[:12])

    def run(plant: bool, seed: int) -> dict[str, float]:
        r = np.random.default_rng(seed)
        return {w: (1.0 if w in frequent else 0.0) - (0.5 if plant and w in planted else 0.0) + 0.1 * r.standard_normal()
                for w in words}

    main, planted_run = run(False, 10), run(True, 11)
    seeds = {1: run(False, 12), 2: run(False, 13)}
    unpaired = cs.auc(-np.array([planted_run[w] for w in words]), np.array([w in planted for w in words]))
    out = planted_paired(planted_run, main, seeds, planted, lex, n_perm=500, seed=0)
    assert unpaired < 0.5  # the confounded test points the wrong way
    assert out["planted_paired_auc"] > 0.95 and out["planted_paired_p"] < 0.01 and out["planted_paired_detected"]
    assert out["planted_learned"] and out["planted_paired_mean_change_ci_high"] < 0
    assert 0.2 < out["planted_paired_auc_seed_null_mean"] < 0.8  # nothing planted between two seeds
    del rng


def test_run_null_rank_p_and_outside() -> None:
    r = cs.run_null(0.5, [0.0, 0.1, -0.1, 0.05])
    assert r["rank_p"] == pytest.approx(1 / 5) and r["outside"] and r["z"] > 3
    assert r["ci_low"] <= 0.0 <= r["ci_high"]
    inside = cs.run_null(0.05, [0.0, 0.1, -0.1, 0.05])
    assert not inside["outside"] and inside["rank_p"] == pytest.approx(3 / 5)
    assert cs.run_null(float("nan"), [0.1])["outside"] is False


def test_shuffled_null_is_centred_and_the_learned_run_falls_outside() -> None:
    lex = _lexicon(300)
    words = sorted(lex)
    vals = np.array([lex[w] for w in words])
    arms = []
    for k in range(5):
        rng = np.random.default_rng(100 + k)
        rew = dict(zip(words, rng.permutation(vals)))
        arms.append(({w: 0.5 * rew[w] + 0.5 * rng.standard_normal() for w in words}, rew))  # learns ITS reward
    main = {w: 0.5 * lex[w] + 0.5 * np.random.default_rng(7).standard_normal() for w in words}
    out = shuffled_null(main, arms, lex)
    assert out["shuffled_null_centred"]
    assert out["shuffled_learned"]
    assert out["learned_value_tau_vs_null_outside"] and out["learned_value_tau_within_sign_vs_null_outside"]
    assert out["learned_value_tau_vs_null_rank_p"] == pytest.approx(1 / 6)


def test_within_sign_metrics_over_seeds() -> None:
    lex = _lexicon(200)
    rng = np.random.default_rng(4)
    by_seed = {s: {w: v + rng.standard_normal() for w, v in lex.items()} for s in range(3)}
    out = within_sign_metrics(by_seed[0], by_seed, lex, n_boot=100, seed=0)
    assert len(out["learned_value_tau_within_sign_per_seed"]) == 3
    assert out["learned_value_tau_within_sign_seed_ci_low"] > 0
    assert "learned_value_sign_gap" in out and "learned_value_mean_positive_words" in out


def test_centred_shuffle_removes_the_lexicon_mean_and_keeps_the_spread() -> None:
    lex = lexicon()
    raw, centred = shuffled_lexicon(0), shuffled_lexicon(0, centred=True)
    mean = float(np.mean(list(lex.values())))
    assert mean < -0.1
    assert abs(np.mean(list(centred.values()))) < 1e-9
    assert all(centred[w] == pytest.approx(raw[w] - mean) for w in list(lex)[:50])


def test_binned_shuffle_permutes_within_writing_frequency_bins_and_centres_each() -> None:
    """`bin_words`: values move only among words the base model writes about as often (bins of that
    size by writes; never-written words are one bin), each bin centred; 0 bins = the whole-lexicon
    permutation, value for value; seeded."""
    lex = lexicon()
    ranked = sorted(lex)[:95]
    writes = {w: 100 - i for i, w in enumerate(ranked)}  # 95 written words, the rest never
    binned = shuffled_lexicon(3, centred=True, writes=writes, bin_words=20)
    assert sorted(binned) == sorted(lex) and binned == shuffled_lexicon(3, centred=True, writes=writes, bin_words=20)
    bins = [ranked[i : i + 20] for i in range(0, 95, 20)] + [[w for w in lex if w not in writes]]
    for words in bins:
        assert abs(sum(binned[w] for w in words)) < 1e-6  # centred per bin
        mean = float(np.mean([lex[w] for w in words]))
        assert sorted(round(binned[w] + mean, 9) for w in words) == sorted(round(lex[w], 9) for w in words)  # permuted within
    assert shuffled_lexicon(3, centred=True, writes=writes, bin_words=0) == shuffled_lexicon(3, centred=True)


def test_verdicts_read_the_paired_and_null_keys() -> None:
    from lfp.report import verdicts

    m = {"planted_paired_auc": 0.9, "planted_paired_p": 0.001, "planted_paired_detected": True, "planted_auc": 0.4,
         "planted_paired_mean_change": -0.3, "planted_paired_mean_change_ci_low": -0.5, "planted_paired_mean_change_ci_high": -0.1,
         "learned_value_tau_null_mean": 0.01, "learned_value_tau_null_ci_low": -0.02, "learned_value_tau_null_ci_high": 0.04,
         "shuffled_null_centred": True, "shuffled_arms": 4, "shuffled_arms_tau_reward_mean": 0.0, "shuffled_learned": False,
         "learned_value_tau_within_sign": 0.1, "learned_value_tau_within_sign_ci_low": 0.05, "learned_value_tau_within_sign_ci_high": 0.15,
         "learned_value_tau_within_sign_null_max": 0.02, "learned_value_tau_within_sign_vs_null_outside": True}
    assert verdicts.planted(m, None)[0] == verdicts.PASSED
    assert verdicts.planted_learned(m)[0] == verdicts.PASSED
    assert verdicts.shuffled_null_centred(m)[0] == verdicts.PASSED
    assert verdicts.shuffled_learned(m)[0] == verdicts.FAILED
    assert verdicts.beyond_null(m)[0] == verdicts.PASSED
    assert verdicts.beyond_null({**m, "learned_value_tau_within_sign_vs_null_outside": False})[0] == verdicts.FAILED
    assert verdicts.beyond_null({})[0] == verdicts.NOT_RUN
