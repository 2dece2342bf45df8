"""Preference probes over dialogue splits and per subset (issue #27 item 5).

Why: one dialogue split is one draw. On hh the reported pairwise accuracy of the codes (42.3 %) was
the lowest of 40 split seeds (mean 50.2 %), bag-of-words' 57.0 % the highest of 20; and the two HH
subsets point opposite ways (within each ~57–59 %, helpful → harmless 42 %, pooled ≈ 50 %). So every
probe here is refitted over `measure.pair_split_seeds` splits (seeds `seed`, `seed` + 1, ...; the
features are reused, only the split and the fit change) and reported as mean, sd and 95 %
t-interval over splits, with the rank of the reported split (`seed`) among them; and fitted within
each subset and across subsets (train on A's training pairs, test on B's test pairs, so within-B and
A → B are scored on the same pairs).

Pure: features in (one function per source: training mask -> reply features [n, 2, d] fitted on
those training pairs only), a dict of lfp.json keys out. The probes are the pointwise and pairwise
logistic probes of `measure.run_probes`, fitted the same way, so the reported split's values here
equal the reported keys.

The t-interval over split seeds says how much the number moves with the split; the splits share
pairs, so it is not a confidence interval for a fresh sample of dialogues.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lfp.measure import metrics
from lfp.measure.probes import fit_logistic, split_by_group

# a subset is measured on its own (and in transfers) only where a split gives it at least this many test pairs
# (test fraction × its pairs): below it one pair moves the accuracy by more than 1/8
MIN_SUBSET_TEST_PAIRS = 8
FORMS = {"pointwise": "probe_accuracy", "pairwise": "pairwise_accuracy"}  # the reported keys' names
FeatureFn = Callable[[np.ndarray], np.ndarray]  # training mask [n] -> reply features [n, 2, d] fitted on it


def orientation(n: int, seed: int) -> np.ndarray:
    """+1 / −1 per pair: which reply comes first in the pairwise probe (so the label is not constant)."""
    return np.where(np.random.default_rng(seed).random(n) < 0.5, 1.0, -1.0)


def fit_pairwise(delta: np.ndarray, label: np.ndarray, c: float, seed: int) -> Any:
    """Logistic on reply differences without intercept: swapping the replies flips the decision."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, fit_intercept=False, max_iter=2000, random_state=seed).fit(delta, label)


def subset_key(name: str) -> str:
    """A subset's name as it appears in keys: 'helpful-base' -> 'helpful_base'."""
    return re.sub(r"[^0-9A-Za-z]+", "_", str(name)).strip("_").lower() or "unnamed"


@dataclass
class PairProbes:
    """The pointwise and pairwise probes fitted on one set of training pairs (None: could not fit)."""

    pointwise: Any
    pairwise: Any


def fit_pair_probes(x: np.ndarray, train: np.ndarray, sign: np.ndarray, c: float, seed: int) -> PairProbes:
    """Both logistic probes on the pairs in `train`, as `measure.run_probes` fits them."""
    n = int(train.sum())
    if n == 0:
        return PairProbes(None, None)
    point = fit_logistic(x[train].reshape(2 * n, -1), np.tile([1, 0], n), c, seed)
    label = (sign[train] > 0).astype(int)
    if len(np.unique(label)) < 2:  # one orientation only: the pairwise logistic cannot be fitted
        return PairProbes(point, None)
    delta = (x[train][:, 0] - x[train][:, 1]) * sign[train][:, None]
    return PairProbes(point, fit_pairwise(delta, label, c, seed))


def score_pair_probes(probes: PairProbes, x: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """Accuracy of each form on the pairs in `test` (NaN where there is no test pair or no probe)."""
    out = {"pointwise": float("nan"), "pairwise": float("nan")}
    if not test.any():
        return out
    xt = x[test]
    if probes.pointwise is not None:
        pred = probes.pointwise.predict(xt.reshape(-1, xt.shape[-1])).reshape(-1, 2)
        out["pointwise"] = float(np.mean(((pred[:, 0] == 1).astype(float) + (pred[:, 1] == 0).astype(float)) / 2))
    if probes.pairwise is not None:
        out["pairwise"] = float(np.mean(probes.pairwise.decision_function(xt[:, 0] - xt[:, 1]) > 0))
    return out


def eligible_subsets(subsets: np.ndarray, test_fraction: float, min_test: int) -> tuple[list[str], dict[str, str]]:
    """Subsets measured on their own, and the reason each other subset is not."""
    names = sorted({str(s) for s in subsets})
    keep, skipped = [], {}
    for name in names:
        n = int(np.sum(subsets == name))
        expected = test_fraction * n
        if len(names) == 1:
            skipped[name] = "the only subset: its probes are the pooled ones"
        elif expected < min_test:
            skipped[name] = (f"{n} pairs x test fraction {test_fraction:g} = {expected:.1f} test pairs per split, "
                             f"below the minimum of {min_test}")
        else:
            keep.append(name)
    return keep, skipped


def _summary(key: str, values: Sequence[float]) -> dict[str, Any]:
    """Per-split values with their mean, sd and 95 % t-interval (NaN values skipped)."""
    v = np.asarray(values, dtype=float)
    finite = v[np.isfinite(v)]
    mean, lo, hi = metrics.mean_t_interval(v)
    sd = float(finite.std(ddof=1)) if len(finite) > 1 else float("nan")
    return {f"{key}_per_split_seed": [float(a) for a in v], f"{key}_split_mean": mean, f"{key}_split_sd": sd,
            f"{key}_split_ci_low": lo, f"{key}_split_ci_high": hi}


def reported_rank(values: Sequence[float], reported: float) -> float:
    """Rank of the reported split's value among all split seeds' (1 = lowest; ties share the mean rank)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not np.isfinite(reported) or len(v) == 0:
        return float("nan")
    return float(np.sum(v < reported) + (np.sum(v == reported) + 1) / 2)


def split_probe_metrics(features: Mapping[str, FeatureFn], ids: np.ndarray, subsets: np.ndarray, test_fraction: float,
                        seeds: Sequence[int], c: float, probe_seed: int, min_test: int = MIN_SUBSET_TEST_PAIRS) -> dict[str, Any]:
    """The lfp.json keys of the probes over dialogue splits `seeds` (the first is the reported split):
    pooled, within each subset, and from each subset to each other; fine-tuned − base per split."""
    ids, subsets = np.asarray(ids, dtype=object), np.asarray([str(s) for s in subsets], dtype=object)
    keep, skipped = eligible_subsets(subsets, test_fraction, min_test)
    scopes = {"": None} | {f"subset_{subset_key(a)}_": (a, a) for a in keep}
    scopes |= {f"transfer_{subset_key(a)}_to_{subset_key(b)}_": (a, b) for a in keep for b in keep if a != b}
    acc: dict[tuple[str, str, str], list[float]] = {(s, f, src): [] for s in scopes for f in FORMS for src in features}
    n_test: dict[str, list[int]] = {s: [] for s in scopes}
    sign = orientation(len(ids), probe_seed)
    for seed in seeds:
        test = split_by_group(ids, test_fraction, int(seed))
        train = ~test
        for scope, pair in scopes.items():
            n_test[scope].append(int(test.sum()) if pair is None else int((test & (subsets == pair[1])).sum()))
        for src, make in features.items():
            x = make(train)
            fitted = {None: fit_pair_probes(x, train, sign, c, probe_seed)}
            fitted |= {a: fit_pair_probes(x, train & (subsets == a), sign, c, probe_seed) for a in keep}
            for scope, pair in scopes.items():
                probes, on = (fitted[None], test) if pair is None else (fitted[pair[0]], test & (subsets == pair[1]))
                for form, value in score_pair_probes(probes, x, on).items():
                    acc[(scope, form, src)].append(value)

    out: dict[str, Any] = {"pair_split_seeds": [int(s) for s in seeds], "pair_split_reported_seed": int(seeds[0]),
                           "pair_subset_min_test_pairs": int(min_test),
                           "pair_subsets": [subset_key(a) for a in keep],
                           "pair_subset_names": {subset_key(a): a for a in sorted(set(subsets))},
                           "pair_subsets_skipped": {subset_key(a): why for a, why in skipped.items()}}
    for name in sorted(set(subsets)):
        out[f"subset_{subset_key(name)}_n_pairs"] = int(np.sum(subsets == name))
    for scope in scopes:
        out[f"{scope}n_test_split_mean"] = float(np.mean(n_test[scope]))
        for form, key in FORMS.items():
            for src in features:
                values = acc[(scope, form, src)]
                out.update(_summary(f"{scope}{key}_{src}", values))
                if scope == "":
                    out[f"{key}_{src}_reported_split_rank"] = reported_rank(values, values[0])
            if "finetuned" in features and "base" in features:
                diff = list(np.asarray(acc[(scope, form, "finetuned")]) - np.asarray(acc[(scope, form, "base")]))
                out.update(_summary(f"{scope}{key}_diff", diff))
                if scope == "":
                    out[f"{key}_diff_reported_split_rank"] = reported_rank(diff, diff[0])
    return out
