"""Table 7: are the features labelled task-related active where the probe predicts high feedback?

`feature_frequency` is the paper's statistic (all probe rows, all features, dead ones included).
`table7` is the version that can fail: held-out rows only, the within-feature contrast (high −
low) of related vs unrelated explained features, with a one-sided label-permutation p; the paper's
gap on the default run was a base-rate effect that this contrast cancels.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def feature_frequency(codes: np.ndarray, predicted: np.ndarray, related_cols: list[int], threshold: float) -> dict[str, Any]:
    """Paper method: fraction of high-predicted inputs (all rows) in which a feature is active
    (code > 0), averaged over the related features and over all features (dead ones included);
    nulls (with the count 0) when no input passes."""
    high = predicted > threshold
    out: dict[str, Any] = {
        "n_high_delta_inputs": int(high.sum()),
        "n_inputs": int(len(predicted)),
        "freq_related": None,
        "freq_all": None,
        "freq_ratio": None,
    }
    if not high.any():
        return out
    active = (codes[high] > 0).mean(axis=0)
    out["freq_all"] = float(active.mean())
    if related_cols:
        out["freq_related"] = float(active[related_cols].mean())
        if out["freq_all"] > 0:
            out["freq_ratio"] = out["freq_related"] / out["freq_all"]
    return out


def label_permutation_p(values: np.ndarray, related: np.ndarray, n_permutations: int, rng: np.random.Generator) -> float:
    """One-sided p that mean(values[related]) − mean(values[~related]) is this large when the
    related labels are shuffled across the features ((1 + #≥) / (1 + n), Monte Carlo)."""
    values, related = np.asarray(values, dtype=float), np.asarray(related, dtype=bool)
    k = int(related.sum())
    if k == 0 or k == len(values):
        return float("nan")
    observed = values[related].mean() - values[~related].mean()
    total = values.sum()
    # each row ranks the features at random: its first k are one relabelling's "related"
    ranks = np.argsort(rng.random((n_permutations, len(values))), axis=1)[:, :k]
    rel_sum = values[ranks].sum(axis=1)
    stats = rel_sum / k - (total - rel_sum) / (len(values) - k)
    return float((1 + np.sum(stats >= observed - 1e-12)) / (1 + n_permutations))


def contrast_split(
    active: np.ndarray, live: np.ndarray, high: np.ndarray, related: np.ndarray, labelled: np.ndarray,
    n_permutations: int, seed: int,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Table 7 for one split of held-out rows into high / low predicted feedback.

    `active` [rows, explained features] (code > 0), `live` [rows, live features], `high` [rows],
    `related`, `labelled` [explained features] (unlabelled features are left out of the comparison).
    Returns the metrics (no prefix), and per explained feature its frequency on high and low rows.
    `p` tests the within-feature contrast (freq high − freq low: a feature that is simply frequent
    everywhere contributes 0); `p_high_only` tests the paper's statistic (freq on high rows only),
    which a base-rate difference alone can make small.
    """
    n_high, n_low = int(high.sum()), int((~high).sum())
    nan = np.full(active.shape[1], np.nan)
    out: dict[str, Any] = {"n_high": n_high, "n_low": n_low}
    keys = ("related_high", "related_low", "unrelated_high", "unrelated_low", "related_contrast", "unrelated_contrast",
            "p", "p_high_only", "live_baseline_high", "live_baseline_low", "reason")
    out.update({k: None for k in keys})
    if n_high == 0 or n_low == 0:
        out["reason"] = f"{n_high} high and {n_low} low held-out rows: no contrast"
        return out, nan, nan
    f_high, f_low = active[high].mean(axis=0), active[~high].mean(axis=0)
    contrast = f_high - f_low
    if live.shape[1]:
        out["live_baseline_high"] = float(live[high].mean())
        out["live_baseline_low"] = float(live[~high].mean())
    related, unrelated = related & labelled, ~related & labelled
    for name, mask in (("related", related), ("unrelated", unrelated)):
        if mask.any():
            out[f"{name}_high"] = float(f_high[mask].mean())
            out[f"{name}_low"] = float(f_low[mask].mean())
            out[f"{name}_contrast"] = float(contrast[mask].mean())
    if related.any() and unrelated.any():
        out["p"] = label_permutation_p(contrast[labelled], related[labelled], n_permutations, np.random.default_rng([seed, 7]))
        out["p_high_only"] = label_permutation_p(f_high[labelled], related[labelled], n_permutations, np.random.default_rng([seed, 7]))
    else:
        out["reason"] = f"{int(related.sum())} related and {int(unrelated.sum())} unrelated labelled features: no comparison"
    return out, f_high, f_low


def table7(
    codes: np.ndarray, predicted: np.ndarray, is_test: np.ndarray, explained: list[dict[str, Any]], cols: list[int],
    threshold: float, quantile: float, n_permutations: int, seed: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Table 7 on held-out rows at `threshold` (`t7_*`) and at the `quantile` of the held-out
    predictions (`t7_quantile_*`), and its per-feature rows. `cols[i]` is explained[i]'s column."""
    test = np.asarray(is_test).astype(bool)
    labelled = np.asarray([row["related"] is not None for row in explained], dtype=bool)
    related = np.asarray([row["related"] is True for row in explained], dtype=bool)
    codes_t, pred_t = codes[test], np.asarray(predicted)[test]
    active = codes_t[:, np.asarray(cols, dtype=int)] > 0 if len(cols) else np.zeros((len(pred_t), 0), bool)
    any_active = codes_t > 0
    live = any_active[:, any_active.any(axis=0)]  # dead on held-out rows: no evidence either way
    out: dict[str, Any] = {
        "t7_rows": "held-out (is_test)", "t7_n_test": int(test.sum()), "t7_n_live": int(live.shape[1]),
        "t7_n_features": int(codes.shape[1]), "t7_n_related": int(related.sum()), "t7_n_unrelated": int((~related & labelled).sum()),
        "t7_n_unlabelled": int((~labelled).sum()), "t7_threshold": float(threshold), "t7_quantile": float(quantile),
        "t7_quantile_threshold": float(np.quantile(pred_t, quantile)) if len(pred_t) else None,
    }
    splits = {"t7_": pred_t > threshold,
              "t7_quantile_": pred_t >= out["t7_quantile_threshold"] if len(pred_t) else np.zeros(0, bool)}
    per_feature: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    # mean code per feature on high / low rows: where a feature is active on every row (frequency
    # 100 % vs 100 %), its size is what can still differ (shown on the dashboards)
    values = codes_t[:, np.asarray(cols, dtype=int)] if len(cols) else np.zeros((len(pred_t), 0))
    per_feature_mean: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for prefix, high in splits.items():
        m, f_high, f_low = contrast_split(active, live, high, related, labelled, n_permutations, seed)
        out.update({prefix + k: v for k, v in m.items()})
        per_feature[prefix] = (f_high, f_low)
        nan = np.full(values.shape[1], np.nan)
        per_feature_mean[prefix] = (values[high].mean(axis=0) if high.any() else nan, values[~high].mean(axis=0) if (~high).any() else nan)
    rows = []
    for j, row in enumerate(explained):  # unlabelled features too: their frequencies still mean something
        rec: dict[str, Any] = dict(row)
        for prefix, name in (("t7_", "threshold"), ("t7_quantile_", "quantile")):
            f_high, f_low = per_feature[prefix]
            hi, lo = f_high[j], f_low[j]
            rec.update({f"{name}_freq_high": None if np.isnan(hi) else float(hi), f"{name}_freq_low": None if np.isnan(lo) else float(lo),
                        f"{name}_contrast": None if np.isnan(hi) or np.isnan(lo) else float(hi - lo)})
            m_hi, m_lo = per_feature_mean[prefix][0][j], per_feature_mean[prefix][1][j]
            rec.update({f"{name}_mean_high": None if np.isnan(m_hi) else float(m_hi), f"{name}_mean_low": None if np.isnan(m_lo) else float(m_lo)})
        rows.append(rec)
    return out, rows

