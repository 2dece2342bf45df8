"""Probes that word identity cannot pass, with the ceilings and controls beside them.

Split by WORD: no test word occurs in a training row, so a probe must generalise from what the
activations encode, not look up words it has seen (on the paper's split by triple, a one-hot
lookup of word identity alone beats the probe). Codes are normalised per layer (each layer's
block divided by its mean row norm on the training rows), so no layer dominates by scale.

Beside every τ: the identity-only ceiling (one-hot ridge on word identity, same split), the
sign-only ceiling (perfect sign, random order within each sign), τ within each sign (free of the
sign effect), and for two sources (fine-tuned vs base) the difference with a paired bootstrap CI.
Every source (fine-tuned codes, base codes, their difference through one dictionary) goes through
the same `heldout_probe`; `split_seed_taus` repeats it over word splits (the split varies, not the
fine-tune), and `error_vs_learned` gives each held-out word's |error| for Fig. 4's full axis.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from lfp.measure import metrics


def word_split(words: np.ndarray, test_fraction: float, seed: int, always_test: Collection[str] = ()) -> np.ndarray:
    """Boolean is_test per row: a seeded share of the distinct words goes entirely to test.
    `always_test` words (the drawn plant's pool) are held out on every split and count towards the
    share, so no probe is ever fitted on a word the planted reward may have changed; without them
    the split is the plain seeded one."""
    uniq = np.array(sorted(set(words.tolist())), dtype=object)
    rng = np.random.default_rng(seed)
    n_test = min(max(1, int(round(test_fraction * len(uniq)))), len(uniq) - 1)
    forced = set(always_test) & set(uniq.tolist())
    if not forced:
        test_words = set(rng.permutation(uniq)[:n_test].tolist())
    else:
        rest = np.array([w for w in uniq if w not in forced], dtype=object)
        test_words = forced | set(rng.permutation(rest)[: max(0, n_test - len(forced))].tolist())
    return np.array([w in test_words for w in words], dtype=bool)


def layer_scales(codes: np.ndarray, offsets: list[int], widths: list[int]) -> np.ndarray:
    """Per column, its layer's mean row ℓ2 norm on `codes` (1 where a layer is all zero): fitted on
    one set of codes, applied to another (`codes / scales`)."""
    scales = np.ones(codes.shape[1])
    for off, width in zip(offsets, widths):
        scale = float(np.linalg.norm(codes[:, off : off + width], axis=1).mean()) if len(codes) else 0.0
        scales[off : off + width] = scale if scale > 0 else 1.0
    return scales


def layer_normalise(codes: np.ndarray, offsets: list[int], widths: list[int], train: np.ndarray) -> np.ndarray:
    """Each layer's block divided by its mean row ℓ2 norm on the training rows (1 if all zero)."""
    codes = np.asarray(codes, dtype=np.float64)
    return codes / layer_scales(codes[train], offsets, widths)


@dataclass
class WordScores:
    """Per test word: mean prediction, lexicon value, and the τ statistics of the set."""

    words: list[str]
    predicted: np.ndarray
    value: np.ndarray
    tau: float
    tau_p: float
    tau_positive: float  # τ among words of positive value only
    tau_negative: float


def score_words(words: np.ndarray, predicted: np.ndarray, values: np.ndarray) -> WordScores:
    table = metrics.word_table(list(words), np.asarray(predicted, dtype=float), np.asarray(values, dtype=float))
    tau, p = metrics.kendall(table.predicted, table.true_value)
    pos, neg = table.true_value > 0, table.true_value < 0
    return WordScores(list(table.words), table.predicted, table.true_value, tau, p,
                      metrics.kendall(table.predicted[pos], table.true_value[pos])[0],
                      metrics.kendall(table.predicted[neg], table.true_value[neg])[0])


def ridge_predictions(x: np.ndarray, y: np.ndarray, is_test: np.ndarray, alpha: float) -> np.ndarray:
    """Ridge fitted on the training rows, predictions for the test rows."""
    from sklearn.linear_model import Ridge

    return Ridge(alpha=alpha).fit(x[~is_test], y[~is_test]).predict(x[is_test])


def identity_predictions(words: np.ndarray, y: np.ndarray, is_test: np.ndarray, alpha: float) -> np.ndarray:
    """The lookup a probe must beat: ridge on one-hot word identity alone, no model at all."""
    vocab = {w: i for i, w in enumerate(sorted(set(words.tolist())))}
    onehot = np.zeros((len(words), len(vocab)))
    onehot[np.arange(len(words)), [vocab[w] for w in words]] = 1.0
    return ridge_predictions(onehot, y, is_test, alpha)


def sign_ceiling(values: np.ndarray, seed: int, draws: int = 200) -> float:
    """Mean τ of a predictor that knows every word's sign and nothing else (random order within
    each sign): what the paper's construction grants for free."""
    rng = np.random.default_rng(seed)
    values = np.asarray(values, dtype=float)
    taus = [metrics.kendall(np.sign(values) + 0.5 * rng.random(len(values)), values)[0] for _ in range(draws)]
    return float(np.mean(taus))


def paired_tau_difference(a: WordScores, b: WordScores, n_boot: int, seed: int) -> tuple[float, float, float]:
    """τ(a) − τ(b) on the same words, with a percentile CI resampling words (pairs kept)."""
    assert a.words == b.words, "paired scores need the same words"
    diff = a.tau - b.tau
    rng = np.random.default_rng(seed)
    n = len(a.words)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        da = metrics.kendall(a.predicted[i], a.value[i])[0]
        db = metrics.kendall(b.predicted[i], b.value[i])[0]
        if np.isfinite(da) and np.isfinite(db):
            boots.append(da - db)
    if not boots:
        return diff, float("nan"), float("nan")
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return diff, float(lo), float(hi)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a random positive (label 1) scores above a random negative (ties: ½)."""
    from scipy.stats import rankdata

    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def permutation_p(scores: np.ndarray, labels: np.ndarray, n_perm: int, seed: int) -> float:
    """One-sided p of the AUC against random relabelling ((1 + #perm ≥ observed) / (1 + n))."""
    observed = auc(scores, labels)
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, dtype=bool)
    hits = sum(auc(scores, rng.permutation(labels)) >= observed - 1e-12 for _ in range(n_perm))
    return float((1 + hits) / (1 + n_perm))


def word_means(words: list[str], values: np.ndarray) -> dict[str, float]:
    """Mean of `values` per word (NaN values skipped; words with none left out)."""
    sums: dict[str, list[float]] = {}
    for w, v in zip(words, values):
        if np.isfinite(v):
            sums.setdefault(w, []).append(float(v))
    return {w: float(np.mean(v)) for w, v in sums.items()}


def tau_ci(scores: WordScores, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile 95 % CI of one probe's τ resampling its test words (NaN if never defined)."""
    rng = np.random.default_rng(seed)
    n = len(scores.words)
    boots = [metrics.kendall(scores.predicted[i], scores.value[i])[0] for i in (rng.integers(0, n, n) for _ in range(n_boot))]
    boots = [b for b in boots if np.isfinite(b)]
    if not boots:
        return float("nan"), float("nan")
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(lo), float(hi)


@dataclass
class HeldoutProbe:
    """One source's word-held-out ridge probe on one split: per-word scores and the raw
    predictions of the test rows (in row order), for error plots."""

    scores: WordScores
    row_predicted: np.ndarray


def heldout_probe(codes: np.ndarray, target: np.ndarray, words: np.ndarray, values: np.ndarray, is_test: np.ndarray,
                  offsets: list[int], widths: list[int], alpha: float) -> HeldoutProbe:
    """Per-layer normalised codes (scales from the training rows) -> ridge on the training words ->
    τ on the held-out words: the one probe every source (fine-tuned, base, difference) goes through."""
    x = layer_normalise(codes, offsets, widths, ~is_test)
    pred = ridge_predictions(x, np.asarray(target, dtype=float), is_test, alpha)
    return HeldoutProbe(score_words(words[is_test], pred, values[is_test]), pred)


def split_seed_taus(sources: dict[str, tuple[np.ndarray, np.ndarray]], words: np.ndarray, values: np.ndarray,
                    offsets: list[int], widths: list[int], test_fraction: float, seeds: list[int], alpha: float,
                    always_test: Collection[str] = ()) -> dict[str, list[float]]:
    """τ of every source's word-held-out probe on one word split per seed (the *split* varies, the
    models do not: this measures how much τ depends on which words were held out). With sources
    'finetuned' and 'base' also their per-split difference 'diff'."""
    out: dict[str, list[float]] = {name: [] for name in sources}
    if "finetuned" in sources and "base" in sources:
        out["diff"] = []
    for seed in seeds:
        is_test = word_split(words, test_fraction, seed, always_test)
        taus = {name: heldout_probe(c, t, words, values, is_test, offsets, widths, alpha).scores.tau for name, (c, t) in sources.items()}
        for name, tau in taus.items():
            out[name].append(tau)
        if "diff" in out:
            out["diff"].append(taus["finetuned"] - taus["base"])
    return out


def error_vs_learned(probe: HeldoutProbe, words_test: np.ndarray, values_test: np.ndarray, learned: dict[str, float],
                     low_pct: float, high_pct: float) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(words, |error|, learned value) of the held-out words that have a learned value. Errors on
    the VADER scale: the raw predictions go through the paper's percentile rescaling (fitted on the
    test rows' predictions, as the probe stage does), then are averaged per word."""
    scale = metrics.percentile_rescaler(probe.row_predicted, low_pct, high_pct)
    s = score_words(words_test, scale(probe.row_predicted), values_test)
    keep = [i for i, w in enumerate(s.words) if w in learned]
    return ([s.words[i] for i in keep], np.abs(s.predicted[keep] - s.value[keep]), np.array([learned[s.words[i]] for i in keep]))
