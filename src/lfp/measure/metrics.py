"""Pure metric code of the probe stage: Kendall tau on paired values, sign accuracy, the
percentile rescaling into the VADER range, per-word aggregation and bootstrap CIs over triples.

Why a separate module: these numbers are the paper's headline results (Tables 4, 5, 10, 3), and
the paper's own code got one of them wrong (tau on independently sorted lists); keeping them free
of models and files makes each one unit-testable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# VADER's human ratings are on a -4 (extremely negative) .. +4 (extremely positive) scale.
LEXICON_RANGE = (-4.0, 4.0)


def kendall(predicted: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """Kendall tau-b and its p-value between *paired* values (predicted[i] belongs to true[i]).

    NaN when fewer than two pairs or either side is constant (tau is undefined there).
    """
    from scipy.stats import kendalltau

    predicted, true = np.asarray(predicted, dtype=float), np.asarray(true, dtype=float)
    if predicted.shape != true.shape:
        raise ValueError(f"kendall: {predicted.shape} predicted vs {true.shape} true values")
    if len(predicted) < 2 or np.ptp(predicted) == 0 or np.ptp(true) == 0:
        return float("nan"), float("nan")
    res = kendalltau(predicted, true)
    return float(res.statistic), float(res.pvalue)


def sign_accuracy(predicted: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """(share of positive-valued words predicted > 0, share of negative-valued words predicted < 0),
    as in the paper's Table 5; NaN for a side with no words."""
    predicted, true = np.asarray(predicted, dtype=float), np.asarray(true, dtype=float)
    pos, neg = true > 0, true < 0
    acc_pos = float(np.mean(predicted[pos] > 0)) if pos.any() else float("nan")
    acc_neg = float(np.mean(predicted[neg] < 0)) if neg.any() else float("nan")
    return acc_pos, acc_neg


def percentile_rescaler(
    reference: np.ndarray, low_pct: float, high_pct: float, out_range: tuple[float, float] = LEXICON_RANGE
) -> Callable[[np.ndarray], np.ndarray]:
    """An affine map sending the low/high percentiles of `reference` onto `out_range`, then clamping.

    This is the paper code's normalisation of probe outputs (activation-delta units) into the
    lexicon's units: it is monotone, so tau only changes through ties created by the clamp. A
    constant reference maps everything to the middle of the range.
    """
    lo_v, hi_v = np.percentile(np.asarray(reference, dtype=float), [low_pct, high_pct])
    lo, hi = out_range
    if hi_v <= lo_v:
        return lambda x: np.full(np.shape(x), (lo + hi) / 2.0)
    scale = (hi - lo) / (hi_v - lo_v)
    return lambda x: np.clip(lo + (np.asarray(x, dtype=float) - lo_v) * scale, lo, hi)


@dataclass(frozen=True)
class WordTable:
    """Per-word means of element-level predictions (one row per distinct word)."""

    words: list[str]
    predicted: np.ndarray
    true_value: np.ndarray
    count: np.ndarray


def word_table(words: list[str], predicted: np.ndarray, true_value: np.ndarray, weights: np.ndarray | None = None) -> WordTable:
    """Average the predictions of each word's occurrences (weights = bootstrap multiplicities).

    Words whose total weight is 0 are dropped; a word's true value is its lexicon value, which
    must be the same for every occurrence.
    """
    vocab, idx = np.unique(np.asarray(words, dtype=object).astype(str), return_inverse=True)
    w = np.ones(len(words)) if weights is None else np.asarray(weights, dtype=float)
    total = np.bincount(idx, weights=w, minlength=len(vocab))
    pred_sum = np.bincount(idx, weights=w * np.asarray(predicted, dtype=float), minlength=len(vocab))
    true_sum = np.bincount(idx, weights=np.asarray(true_value, dtype=float), minlength=len(vocab))
    n = np.bincount(idx, minlength=len(vocab))
    keep = total > 0
    return WordTable(
        words=[str(v) for v in vocab[keep]],
        predicted=pred_sum[keep] / total[keep],
        true_value=true_sum[keep] / n[keep],
        count=total[keep],
    )


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    groups: np.ndarray,
    n_resamples: int,
    seed: int,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of `statistic(weights)` resampling *groups* (triples) with replacement.

    `statistic` receives one weight per element: how many times its group was drawn. Resampling
    triples rather than elements keeps the positive and negative element of a triple together.
    Resamples where the statistic is undefined (NaN) are skipped; (NaN, NaN) if none is defined.
    """
    if n_resamples <= 0:
        return float("nan"), float("nan")
    uniq, inv = np.unique(np.asarray(groups), return_inverse=True)
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_resamples):
        draws = np.bincount(rng.integers(0, len(uniq), size=len(uniq)), minlength=len(uniq))
        value = statistic(draws[inv].astype(float))
        if np.isfinite(value):
            stats.append(value)
    if not stats:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


def weighted_accuracy(correct: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean of a boolean array under weights (bootstrap multiplicities); NaN when empty."""
    correct = np.asarray(correct, dtype=float)
    w = np.ones_like(correct) if weights is None else np.asarray(weights, dtype=float)
    return float(np.sum(correct * w) / np.sum(w)) if np.sum(w) > 0 else float("nan")


def mean_t_interval(values: np.ndarray | list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean of repeated runs (seeds) and its t-interval; NaN bounds for one
    value, NaN values skipped (a seed whose τ is undefined adds no information)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2.0, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return mean, mean - half, mean + half
