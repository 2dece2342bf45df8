"""The validated measurement's pure parts on cases where the answer is known: a planted linear
signal is found on held-out words, the identity ceiling is what a lookup gives, no word crosses the
split, the permutation p is uniform under the null, learned values and their CIs are right."""

from __future__ import annotations

import numpy as np
import pytest

from lfp.tasks.lexicon_rl.learned import Contexts, learned_values, natural_contexts
from lfp.tasks.lexicon_rl.word_probes import (
    auc,
    identity_predictions,
    layer_normalise,
    paired_tau_difference,
    permutation_p,
    ridge_predictions,
    score_words,
    sign_ceiling,
    word_split,
)


def synthetic(n_words: int = 80, reps: int = 5, signal: float = 1.0, seed: int = 0):
    """Rows = occurrences of words; codes carry `signal` x value along one planted direction."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(-4, 4, n_words)
    words = np.repeat(np.array([f"w{i}" for i in range(n_words)], dtype=object), reps)
    v = np.repeat(values, reps)
    direction = rng.normal(size=16)
    codes = signal * np.outer(v, direction) + rng.normal(scale=0.5, size=(len(v), 16))
    return words, v, codes


def test_no_word_crosses_the_split():
    words, _, _ = synthetic()
    is_test = word_split(words, 0.3, seed=3)
    assert set(words[is_test]).isdisjoint(set(words[~is_test]))
    assert 0 < is_test.mean() < 1
    assert (word_split(words, 0.3, seed=3) == is_test).all()  # seeded


def test_a_planted_linear_signal_is_found_on_held_out_words():
    words, v, codes = synthetic(signal=1.0)
    is_test = word_split(words, 0.3, seed=0)
    found = score_words(words[is_test], ridge_predictions(codes, v, is_test, 1.0), v[is_test])
    assert found.tau > 0.8 and found.tau_p < 1e-6
    assert found.tau_positive > 0.5 and found.tau_negative > 0.5  # within each sign too
    words0, v0, codes0 = synthetic(signal=0.0)  # no signal planted: nothing found
    none = score_words(words0[is_test], ridge_predictions(codes0, v0, is_test, 1.0), v0[is_test])
    assert abs(none.tau) < 0.3


def test_identity_ceiling_is_a_lookup():
    words, v, _ = synthetic()
    by_word = word_split(words, 0.3, seed=0)
    held = identity_predictions(words, v, by_word, alpha=1e-6)
    assert np.ptp(held) < 1e-6  # unseen words: the lookup can only predict its intercept
    rng = np.random.default_rng(0)
    by_row = rng.random(len(words)) < 0.3  # the paper's kind of split: test words seen in training
    seen = score_words(words[by_row], identity_predictions(words, v, by_row, alpha=1e-6), v[by_row])
    assert seen.tau > 0.95  # a lookup recovers every seen word's value


def test_sign_ceiling_is_about_a_half_for_symmetric_values():
    values = np.random.default_rng(1).uniform(-4, 4, 400)
    assert 0.4 < sign_ceiling(values, seed=0, draws=50) < 0.6


def test_layer_normalise_equalises_layer_scales():
    rng = np.random.default_rng(0)
    codes = np.hstack([rng.normal(size=(50, 4)) * 100, rng.normal(size=(50, 3))])
    out = layer_normalise(codes, [0, 4], [4, 3], np.ones(50, dtype=bool))
    norms = [np.linalg.norm(out[:, :4], axis=1).mean(), np.linalg.norm(out[:, 4:], axis=1).mean()]
    assert norms == pytest.approx([1.0, 1.0])


def test_auc_and_permutation_p():
    assert auc(np.array([3.0, 2.0, 1.0, 0.0]), np.array([1, 1, 0, 0])) == 1.0
    assert auc(np.array([1.0, 1.0]), np.array([1, 0])) == 0.5
    labels = np.array([1] * 6 + [0] * 30)
    strong = np.r_[np.full(6, 5.0), np.zeros(30)] + np.random.default_rng(0).normal(scale=0.1, size=36)
    assert permutation_p(strong, labels, 500, seed=0) < 0.01


def test_permutation_p_is_uniform_under_the_null():
    rng = np.random.default_rng(0)
    labels = np.array([1] * 8 + [0] * 32)
    ps = np.array([permutation_p(rng.normal(size=40), labels, 200, seed=i) for i in range(150)])
    assert abs(np.mean(ps < 0.05) - 0.05) < 0.05 and abs(np.mean(ps < 0.5) - 0.5) < 0.12


def test_paired_difference_of_identical_scores_is_zero():
    words, v, codes = synthetic()
    is_test = word_split(words, 0.3, seed=0)
    s = score_words(words[is_test], ridge_predictions(codes, v, is_test, 1.0), v[is_test])
    diff, lo, hi = paired_tau_difference(s, s, 100, seed=0)
    assert diff == lo == hi == 0.0


def test_learned_values_mean_and_interval():
    lv = learned_values(["a", "a", "a", "b"], np.array([1.0, 2.0, 3.0, -1.0]))
    assert lv.words == ["a", "b"] and lv.value.tolist() == [2.0, -1.0]
    assert lv.ci_low[0] < 2.0 < lv.ci_high[0] and np.isnan(lv.ci_low[1])  # one context: no interval
    assert lv.n_contexts.tolist() == [3, 1]


def test_natural_contexts_whole_words_one_per_text():
    texts = ["A good film, good cast.", "Goodness no. Not good.", "nothing here"]
    ctx: Contexts = natural_contexts(texts, ["good"], per_word=5)
    assert ctx.words == ["good", "good"]  # 'Goodness' is not 'good'; one occurrence per text
    for text, (start, end) in zip(ctx.texts, ctx.spans):
        assert text[start:end].lower() == "good" and text.endswith(text[start:end])
