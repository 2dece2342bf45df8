"""Probes on activation deltas and their scores (paper §3.3, §4.1: Tables 3, 4, 5, 10).

Targets: Δ+ = ‖A(x⁺) − A(x⁰)‖₂ for positive elements and −‖A(x⁻) − A(x⁰)‖₂ for negative ones.
Lexicon tasks: ridge from A(x) to the signed delta, split by triple; held-out predictions mapped
into the lexicon's −4..4 scale by sending their 10th/90th percentiles to −4/+4 and clamping (the
paper's code); a word's prediction is the mean over its held-out occurrences; Kendall τ on
(predicted, lexicon value) pairs. Preference tasks: logistic regression positive vs negative
element, split by source pair. Controls: an untrained Xavier-initialised linear probe (the paper's
baseline) and refits on `shuffled_repeats` permutations of the training labels. 95 % CIs by
bootstrap over held-out groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lfp.measure import metrics
from lfp.core.params import Params
from lfp.core.errors import DataError


@dataclass
class ProbeRows:
    """One row per positive and per negative element (triple order, positive first)."""

    codes: np.ndarray  # [2T, sum_n]
    target: np.ndarray  # signed delta
    label: np.ndarray  # 1 = positive element, 0 = negative
    groups: np.ndarray
    words: np.ndarray  # lexicon tasks: the substituted word ('' otherwise)
    values: np.ndarray  # lexicon tasks: its lexicon value (0 otherwise)


def probe_rows(codes: dict[str, np.ndarray], groups: list[str], words: dict[str, list[str]] | None = None, values: dict[str, list[float]] | None = None) -> ProbeRows:
    """Interleave positive/negative elements and attach Δ+ and −Δ− as targets."""
    n = len(groups)
    d_pos = np.linalg.norm(codes["positive"] - codes["neutral"], axis=1)
    d_neg = np.linalg.norm(codes["negative"] - codes["neutral"], axis=1)

    def inter(a: Any, b: Any) -> np.ndarray:
        return np.stack([np.asarray(a), np.asarray(b)], axis=1).reshape(2 * n, *np.shape(a)[1:])

    return ProbeRows(
        codes=inter(codes["positive"], codes["negative"]).astype(np.float32),
        target=inter(d_pos, -d_neg).astype(np.float32),
        label=np.tile([1, 0], n),
        groups=np.repeat(np.asarray(groups, dtype=object), 2),
        words=inter(words["positive"], words["negative"]) if words else np.full(2 * n, "", dtype=object),
        values=inter(values["positive"], values["negative"]).astype(float) if values else np.zeros(2 * n),
    )


def split_by_group(groups: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean is_test mask: a seeded share of the groups (triples / pairs) goes entirely to test."""
    from sklearn.model_selection import GroupShuffleSplit

    uniq = np.unique(groups)
    if len(uniq) < 2:
        raise DataError(f"probe: need at least 2 triples to split into train and test, got {len(uniq)}")
    n_test = min(max(1, int(round(test_fraction * len(uniq)))), len(uniq) - 1)
    splitter = GroupShuffleSplit(n_splits=1, test_size=n_test, random_state=seed)
    _, test_idx = next(splitter.split(np.zeros(len(groups)), groups=groups))
    is_test = np.zeros(len(groups), dtype=bool)
    is_test[test_idx] = True
    return is_test


def xavier_predictions(codes: np.ndarray, seed: int) -> np.ndarray:
    """Outputs of the paper's baseline: an untrained linear probe with Xavier-uniform weights."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.nn.init.xavier_uniform_(torch.empty(1, codes.shape[1]), generator=gen)
    return (torch.from_numpy(np.asarray(codes, dtype=np.float32)) @ weight.T).squeeze(1).numpy()


def fit_ridge(codes: np.ndarray, target: np.ndarray, alpha: float) -> Any:
    from sklearn.linear_model import Ridge

    return Ridge(alpha=alpha).fit(codes, target)


def fit_logistic(codes: np.ndarray, label: np.ndarray, c: float, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(codes, label)


def shuffled_labels(values: np.ndarray, seed: int, repeats: int) -> list[np.ndarray]:
    """Seeded permutations of the training labels for the chance-level control. Several, because
    on clustered codes one refit on shuffled labels can land near 0 % or 100 % by luck."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(values) for _ in range(repeats)]


@dataclass
class VaderEval:
    metrics: dict[str, float]
    table: metrics.WordTable
    scale: Any  # raw prediction -> lexicon scale, fitted on the held-out predictions


def evaluate_vader(raw_test: np.ndarray, rows: ProbeRows, is_test: np.ndarray, params: Params, prefix: str = "", bootstrap: bool = True) -> VaderEval:
    """Per-word τ (all words, negative words), sign accuracy and a bootstrap CI for τ."""
    cfg = params.probe
    scale = metrics.percentile_rescaler(raw_test, cfg.rescale_low_percentile, cfg.rescale_high_percentile)
    pred = scale(raw_test)
    words, values, groups = rows.words[is_test], rows.values[is_test], rows.groups[is_test]
    table = metrics.word_table(list(words), pred, values)
    tau, p = metrics.kendall(table.predicted, table.true_value)
    neg = table.true_value < 0
    tau_neg, p_neg = metrics.kendall(table.predicted[neg], table.true_value[neg])
    acc_pos, acc_neg = metrics.sign_accuracy(table.predicted, table.true_value)
    out = {
        f"{prefix}kendall_tau": tau,
        f"{prefix}kendall_p": p,
        f"{prefix}kendall_tau_negative": tau_neg,
        f"{prefix}kendall_p_negative": p_neg,
        f"{prefix}sign_acc_positive": acc_pos,
        f"{prefix}sign_acc_negative": acc_neg,
    }
    if bootstrap:

        def stat(w: np.ndarray) -> float:
            t = metrics.word_table(list(words), pred, values, w)
            return metrics.kendall(t.predicted, t.true_value)[0]

        lo, hi = metrics.bootstrap_ci(stat, groups, cfg.bootstrap, params.seed)
        out[f"{prefix}kendall_tau_ci_low"], out[f"{prefix}kendall_tau_ci_high"] = lo, hi
    return VaderEval(out, table, scale)


def vader_probe(rows: ProbeRows, is_test: np.ndarray, params: Params, prefix: str = "") -> tuple[dict[str, float], np.ndarray, VaderEval]:
    """Fit the ridge probe; returns metrics, predictions for *all* rows on the lexicon scale, and the
    held-out evaluation. Also the shuffled-label control (only for the main probe, prefix '')."""
    cfg = params.probe
    train = ~is_test
    ridge = fit_ridge(rows.codes[train], rows.target[train], cfg.ridge_alpha)
    raw = ridge.predict(rows.codes)
    ev = evaluate_vader(raw[is_test], rows, is_test, params, prefix)
    out = dict(ev.metrics)
    out[f"{prefix}test_r2"] = float(ridge.score(rows.codes[is_test], rows.target[is_test]))
    if not prefix:
        taus = [
            evaluate_vader(fit_ridge(rows.codes[train], y, cfg.ridge_alpha).predict(rows.codes[is_test]), rows, is_test, params,
                           bootstrap=False).metrics["kendall_tau"]
            for y in shuffled_labels(rows.target[train], params.seed, cfg.shuffled_repeats)
        ]
        base = evaluate_vader(xavier_predictions(rows.codes[is_test], params.seed), rows, is_test, params, bootstrap=False).metrics
        out.update({"shuffled_kendall_tau": float(np.nanmean(taus)) if np.isfinite(taus).any() else float("nan"),
                    "shuffled_kendall_tau_sd": float(np.nanstd(taus)) if np.isfinite(taus).any() else float("nan"),
                    "baseline_kendall_tau": base["kendall_tau"], "baseline_kendall_p": base["kendall_p"],
                    "n_words": len(ev.table.words), "n_words_positive": int(np.sum(ev.table.true_value > 0)),
                    "n_words_negative": int(np.sum(ev.table.true_value < 0))})
    return out, ev.scale(raw), ev


def pair_probe(rows: ProbeRows, is_test: np.ndarray, params: Params, prefix: str = "") -> tuple[dict[str, float], np.ndarray]:
    """Logistic probe positive vs negative element; accuracy on held-out pairs with a bootstrap CI,
    plus the shuffled-label control for the main probe. Returns the decision function of all rows."""
    cfg = params.probe
    train = ~is_test
    clf = fit_logistic(rows.codes[train], rows.label[train], cfg.logistic_c, params.seed)
    correct = clf.predict(rows.codes[is_test]) == rows.label[is_test]
    lo, hi = metrics.bootstrap_ci(lambda w: metrics.weighted_accuracy(correct, w), rows.groups[is_test], cfg.bootstrap, params.seed)
    out = {f"{prefix}probe_accuracy": float(correct.mean()), f"{prefix}probe_accuracy_ci_low": lo, f"{prefix}probe_accuracy_ci_high": hi}
    if not prefix:
        accs = [np.mean(fit_logistic(rows.codes[train], y, cfg.logistic_c, params.seed).predict(rows.codes[is_test]) == rows.label[is_test])
                for y in shuffled_labels(rows.label[train], params.seed, cfg.shuffled_repeats)]
        out["shuffled_probe_accuracy"], out["shuffled_probe_accuracy_sd"] = float(np.mean(accs)), float(np.std(accs))
    return out, clf.decision_function(rows.codes)


def bow_probe(texts: list[str], rows: ProbeRows, is_test: np.ndarray, params: Params) -> dict[str, float]:
    """The text-only baseline a reviewer asks for first: the same logistic probe on binary bag-of-words
    of each element's pooled text (no model at all), same split, same CI. If it matches the probe,
    the probe's accuracy says how different the triples' texts are, not what the model learned."""
    from sklearn.feature_extraction.text import CountVectorizer

    cfg = params.probe
    train = ~is_test
    vec = CountVectorizer(binary=True, lowercase=True).fit([t for t, tr in zip(texts, train) if tr])
    x = vec.transform(texts)
    clf = fit_logistic(x[np.flatnonzero(train)], rows.label[train], cfg.logistic_c, params.seed)
    correct = clf.predict(x[np.flatnonzero(is_test)]) == rows.label[is_test]
    lo, hi = metrics.bootstrap_ci(lambda w: metrics.weighted_accuracy(correct, w), rows.groups[is_test], cfg.bootstrap, params.seed)
    return {"bow_baseline_accuracy": float(correct.mean()), "bow_baseline_accuracy_ci_low": lo, "bow_baseline_accuracy_ci_high": hi}
