"""lfp.measure.metrics: paired Kendall tau, sign accuracy, percentile rescaling, word table, bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lfp.measure import metrics


def test_kendall_uses_pairs_not_independently_sorted_lists():
    true = np.array([-3.0, -1.0, 0.5, 2.0, 3.5])
    pred = -true  # perfectly anti-correlated pairs
    tau, p = metrics.kendall(pred, true)
    assert tau == pytest.approx(-1.0)
    assert p < 0.05
    # the paper's bug: sorting both lists independently makes any two lists look perfectly ranked
    assert metrics.kendall(np.sort(pred), np.sort(true))[0] == pytest.approx(1.0)


def test_kendall_undefined_cases_are_nan():
    assert all(math.isnan(x) for x in metrics.kendall(np.array([1.0]), np.array([2.0])))
    assert all(math.isnan(x) for x in metrics.kendall(np.array([1.0, 1.0, 1.0]), np.array([1.0, 2.0, 3.0])))
    with pytest.raises(ValueError):
        metrics.kendall(np.zeros(3), np.zeros(4))


def test_sign_accuracy_per_polarity():
    true = np.array([2.0, 1.0, 3.0, -1.0, -2.0, 0.0])
    pred = np.array([1.0, -0.5, 0.2, -1.0, 0.3, 5.0])
    pos, neg = metrics.sign_accuracy(pred, true)
    assert pos == pytest.approx(2 / 3)
    assert neg == pytest.approx(1 / 2)
    assert math.isnan(metrics.sign_accuracy(np.array([1.0]), np.array([2.0]))[1])


def test_percentile_rescaler_maps_percentiles_to_range_and_clamps():
    ref = np.arange(101, dtype=float)  # 10th pct = 10, 90th pct = 90
    scale = metrics.percentile_rescaler(ref, 10, 90)
    np.testing.assert_allclose(scale(np.array([10.0, 50.0, 90.0])), [-4.0, 0.0, 4.0])
    np.testing.assert_allclose(scale(np.array([-100.0, 1000.0])), [-4.0, 4.0])
    # monotone: order (and so tau) is kept away from the clamp
    x = np.array([20.0, 35.0, 60.0, 80.0])
    assert np.all(np.diff(scale(x)) > 0)
    np.testing.assert_allclose(metrics.percentile_rescaler(np.ones(5), 10, 90)(np.array([3.0, -3.0])), [0.0, 0.0])


def test_word_table_means_and_weights():
    words = ["good", "bad", "good", "bad", "ok"]
    pred = np.array([1.0, -1.0, 3.0, -3.0, 0.0])
    true = np.array([1.9, -2.5, 1.9, -2.5, 0.9])
    t = metrics.word_table(words, pred, true)
    assert t.words == ["bad", "good", "ok"]
    np.testing.assert_allclose(t.predicted, [-2.0, 2.0, 0.0])
    np.testing.assert_allclose(t.true_value, [-2.5, 1.9, 0.9])
    np.testing.assert_allclose(t.count, [2, 2, 1])
    # weights: "ok" not drawn, the first "good" drawn twice
    tw = metrics.word_table(words, pred, true, np.array([2, 1, 1, 1, 0]))
    assert tw.words == ["bad", "good"]
    np.testing.assert_allclose(tw.predicted, [-2.0, (2 * 1.0 + 3.0) / 3])


def test_bootstrap_ci_resamples_groups_and_is_seeded():
    rng = np.random.default_rng(0)
    correct = rng.random(400) < 0.8
    groups = np.repeat(np.arange(200), 2)
    stat = lambda w: metrics.weighted_accuracy(correct, w)  # noqa: E731
    lo, hi = metrics.bootstrap_ci(stat, groups, 300, seed=1)
    assert lo < correct.mean() < hi
    assert 0.7 < lo and hi < 0.9
    assert (lo, hi) == metrics.bootstrap_ci(stat, groups, 300, seed=1)
    assert all(math.isnan(x) for x in metrics.bootstrap_ci(stat, groups, 0, seed=1))


def test_bootstrap_weights_keep_a_group_together():
    groups = np.array(["a", "a", "b", "b", "c", "c"])
    seen = []

    def stat(w: np.ndarray) -> float:
        seen.append(w.copy())
        return 0.0

    metrics.bootstrap_ci(stat, groups, 20, seed=0)
    for w in seen:
        assert np.all(w[0::2] == w[1::2])  # both elements of a triple always share a multiplicity
        assert w.sum() == 6
