"""Statistics that can see a learned value, and controls that compare like with like.

Why this module: an audit of the committed numbers (issue #27) showed three faults in how the
measurement was scored, each of which this module replaces with a statistic tested on synthetic
data where the answer is known (tests/test_control_stats.py):
- The learned-value τ over all words is mostly ONE number: the gap between positive and negative
  words. A predictor that knows only each word's sign scores ~0.5, and any fine-tune (a shuffled one
  too) can move that gap. The primary statistic is therefore τ *within sign* (learned values and
  lexicon values each centred on their sign's mean), with the between-sign gap reported apart.
- The planted test compared planted words with other positive words inside the planted run; the
  planted words are the most frequent ones, which any fine-tune lifts more. The paired test compares
  each word's learned value in the planted run with the same word's in a run with the true reward
  (same data, same seed): only the plant differs between the two.
- A null is a distribution over runs, not one run's word bootstrap: several shuffled-reward
  fine-tunes give the spread a run-level statistic has without a learned pattern, and the measured
  run must fall outside it.
Pure functions; the measure stage trains, reads and calls them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from lfp.measure import metrics
from lfp.tasks.lexicon_rl.word_probes import auc, permutation_p


def _aligned(per_word: Mapping[str, float], target: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """(value, target) over the words both know, finite and with a non-zero target, in word order."""
    words = [w for w in sorted(per_word) if w in target and np.isfinite(per_word[w]) and target[w] != 0]
    return np.array([per_word[w] for w in words], dtype=float), np.array([target[w] for w in words], dtype=float)


def centre_by_sign(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x and y minus their mean within each sign of y: what is left is the order *inside* a sign."""
    xc, yc = np.array(x, dtype=float), np.array(y, dtype=float)
    for side in (y > 0, y < 0):
        if side.any():
            xc[side] -= xc[side].mean()
            yc[side] -= yc[side].mean()
    return xc, yc


def within_sign_tau(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Kendall τ (and p) of x against y after removing each sign's mean from both: 0 for a value that
    knows only the sign of y, however large the gap between the signs."""
    xc, yc = centre_by_sign(np.asarray(x, float), np.asarray(y, float))
    return metrics.kendall(xc, yc)


def sign_gap(x: np.ndarray, y: np.ndarray) -> float:
    """Mean x over words with y > 0 minus mean x over words with y < 0 (NaN if a side is empty)."""
    pos, neg = np.asarray(y) > 0, np.asarray(y) < 0
    return float(np.mean(x[pos]) - np.mean(x[neg])) if pos.any() and neg.any() else float("nan")


def _stratified_indices(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A bootstrap resample that keeps each sign's count (the statistic is defined within sign)."""
    parts = [np.flatnonzero(side) for side in (y > 0, y < 0)]
    return np.concatenate([rng.choice(p, len(p)) for p in parts if len(p)])


def _interval(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return float(lo), float(hi)


def within_sign_stats(per_word: Mapping[str, float], target: Mapping[str, float], n_boot: int, seed: int) -> dict[str, float]:
    """τ within sign (p, CI), τ among positive and among negative words alone, and the between-sign
    gap of the values with its CI; CIs resample words within each sign."""
    x, y = _aligned(per_word, target)
    tau, p = within_sign_tau(x, y)
    pos, neg = y > 0, y < 0
    rng = np.random.default_rng(seed)
    boots = [_stratified_indices(y, rng) for _ in range(n_boot)] if len(x) else []
    tau_lo, tau_hi = _interval([within_sign_tau(x[i], y[i])[0] for i in boots])
    gap_lo, gap_hi = _interval([sign_gap(x[i], y[i]) for i in boots])
    return {"tau": tau, "p": p, "ci_low": tau_lo, "ci_high": tau_hi,
            "tau_positive": metrics.kendall(x[pos], y[pos])[0] if pos.sum() > 1 else float("nan"),
            "tau_negative": metrics.kendall(x[neg], y[neg])[0] if neg.sum() > 1 else float("nan"),
            "gap": sign_gap(x, y), "gap_ci_low": gap_lo, "gap_ci_high": gap_hi,
            "mean_positive": float(x[pos].mean()) if pos.any() else float("nan"),
            "mean_negative": float(x[neg].mean()) if neg.any() else float("nan")}


def within_sign_keys(key: str, s: Mapping[str, float]) -> dict[str, float]:
    """The lfp.json names: `{key}_within_sign[_p|_ci_low|_ci_high]`, `{key}_positive_words`,
    `{key}_negative_words`, and the gap as `{key}_sign_gap[_ci_low|_ci_high]` + the two means."""
    base = key.removesuffix("_tau")
    return {f"{key}_within_sign": s["tau"], f"{key}_within_sign_p": s["p"],
            f"{key}_within_sign_ci_low": s["ci_low"], f"{key}_within_sign_ci_high": s["ci_high"],
            f"{key}_positive_words": s["tau_positive"], f"{key}_negative_words": s["tau_negative"],
            f"{base}_sign_gap": s["gap"], f"{base}_sign_gap_ci_low": s["gap_ci_low"], f"{base}_sign_gap_ci_high": s["gap_ci_high"],
            f"{base}_mean_positive_words": s["mean_positive"], f"{base}_mean_negative_words": s["mean_negative"]}


def paired_change(run: Mapping[str, float], reference: Mapping[str, float]) -> dict[str, float]:
    """Per word, its value in `run` minus its value in `reference` (words both cover, finite)."""
    return {w: run[w] - reference[w] for w in run if w in reference and np.isfinite(run[w]) and np.isfinite(reference[w])}


def compared_words(words: Iterable[str], planted: Collection[str], lexicon: Mapping[str, float],
                   controls: Collection[str] | None = None) -> list[str]:
    """The words a planted test compares: the planted ones and their controls (a drawn plant's
    undrawn pool words; by default every other positive lexicon word)."""
    def is_control(w: str) -> bool:
        return w in controls if controls is not None else lexicon.get(w, 0.0) > 0

    return [w for w in sorted(words) if w in planted or is_control(w)]


def paired_planted_detection(planted_run: Mapping[str, float], reference_run: Mapping[str, float], planted: Collection[str],
                             lexicon: Mapping[str, float], n_perm: int, seed: int,
                             controls: Collection[str] | None = None) -> dict[str, float]:
    """Planted words vs their controls by −(planted run − reference run): a word the plant taught
    the model to avoid fell more in the planted run than in a run with the true reward on the same
    data and seed. Frequency and any other property both runs share cancel."""
    change = paired_change(planted_run, reference_run)
    words = compared_words(change, planted, lexicon, controls)
    values = np.array([change[w] for w in words])
    labels = np.array([w in planted for w in words], dtype=bool)
    both = bool(labels.any() and (~labels).any())  # with one group empty there is nothing to separate
    return {"auc": auc(-values, labels) if both else float("nan"),
            "p": permutation_p(-values, labels, n_perm, seed) if both else float("nan"),
            "n_planted": int(labels.sum()), "n_other": int((~labels).sum()),
            "mean_planted": float(values[labels].mean()) if labels.any() else float("nan"),
            "mean_other": float(values[~labels].mean()) if (~labels).any() else float("nan")}


def run_null(observed: float, null: Sequence[float]) -> dict[str, Any]:
    """Where one run's statistic falls in a distribution over runs that had no pattern to learn:
    the null's mean, sd, range and t-interval of its mean, the one-sided rank p
    (1 + #null ≥ observed) / (1 + n) — never below 1/(n+1), so n sets the strongest claim — the
    z-score against the null, and `outside` (observed above every null run)."""
    values = np.array([v for v in null if np.isfinite(v)], dtype=float)
    n = len(values)
    if n == 0 or not np.isfinite(observed):
        return {"n": n, "mean": float("nan"), "sd": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
                "min": float("nan"), "max": float("nan"), "rank_p": float("nan"), "z": float("nan"), "outside": False}
    mean, lo, hi = metrics.mean_t_interval(values) if n > 1 else (float(values[0]), float("nan"), float("nan"))
    sd = float(values.std(ddof=1)) if n > 1 else float("nan")
    return {"n": n, "mean": float(mean), "sd": sd, "ci_low": float(lo), "ci_high": float(hi),
            "min": float(values.min()), "max": float(values.max()),
            "rank_p": float((1 + np.sum(values >= observed)) / (1 + n)),
            "z": float((observed - mean) / sd) if n > 1 and sd > 0 else float("nan"),
            "outside": bool(observed > values.max())}


def null_keys(key: str, r: Mapping[str, Any]) -> dict[str, Any]:
    """`{key}_null_{mean,sd,ci_low,ci_high,min,max,n}` and `{key}_vs_null_{rank_p,z,outside}`."""
    out = {f"{key}_null_{k}": r[k] for k in ("mean", "sd", "ci_low", "ci_high", "min", "max", "n")}
    out.update({f"{key}_vs_null_{k}": r[k] for k in ("rank_p", "z", "outside")})
    return out
