"""Table 6 in the validate.json schema: the paper's condition means (`ablation_*`), the paired
per-sample deltas to the SAE reconstruction with bootstrap CIs (`t6_*`), and table6_samples.csv.

The scores come from the task kind's ablation objective (`kind.ablation().scores`, a dict with
`scores`, `samples`, `kl`, `frequencies`, `randoms`, …; see lfp.validation.objective)."""

from __future__ import annotations

import csv
from typing import Any

import numpy as np

from lfp.core import io
from lfp.validation import ablation


def mean_frequency(features: dict[int, list[int]], frequencies: dict[int, np.ndarray]) -> float | None:
    values = [float(frequencies[L][f]) for L, feats in features.items() for f in feats]
    return float(np.mean(values)) if values else None


def ablation_metrics(result: dict[str, Any] | None, n_random: int, reason: str | None) -> dict[str, Any]:
    """Paper method: the condition means in the validate.json schema (`ablation_random` = mean of
    the frequency-matched draws)."""
    scores, kls = (result or {}).get("scores", {}), (result or {}).get("kl", {})
    draws = [scores[f"random{i}"] for i in range(n_random) if f"random{i}" in scores]
    kl_draws = [kls[f"random{i}"] for i in range(n_random) if f"random{i}" in kls]
    return {
        "ablation_metric": (result or {}).get("ablation_metric"),
        "ablation_n": (result or {}).get("ablation_n", 0),
        "ablation_no_hook": scores.get("no_hook"),
        "ablation_reconstruction": scores.get("reconstruction"),
        "ablation_related": scores.get("related"),
        "ablation_random": float(np.mean(draws)) if draws else None,
        "ablation_random_draws": draws,
        "ablation_random_control": "frequency_matched",
        # mean KL(no hook || condition) of next-token distributions: did the intervention act?
        "ablation_kl_reconstruction": kls.get("reconstruction"),
        "ablation_kl_related": kls.get("related"),
        "ablation_kl_random": float(np.mean(kl_draws)) if kl_draws else None,
        "ablation_reason": reason,
    }


def table6_metrics(result: dict[str, Any] | None, related: dict[int, list[int]], n_random: int, n_bootstrap: int, seed: int) -> dict[str, Any]:
    """Every condition − SAE reconstruction per sample (completion reward / DPO margin), mean and
    paired-bootstrap 95 % CI; the random draws pooled (their CI also resamples the draws);
    related − random too."""
    keys = ["t6_n", "t6_prefix_reward", "t6_no_hook", "t6_reconstruction", "t6_related", "t6_random",
            "t6_related_token_freq", "t6_random_token_freq"]
    for c in ("no_hook", "related", "random", "related_vs_random"):
        keys += [f"t6_{c}_delta", f"t6_{c}_ci_low", f"t6_{c}_ci_high"]
    out: dict[str, Any] = {k: None for k in keys}
    out.update({"t6_metric": (result or {}).get("t6_metric"), "t6_random_draw_deltas": [], "t6_n": 0})
    if not result:
        return out
    s = result["samples"]
    rec = s["reconstruction"]
    draws = [s[f"random{i}"] for i in range(n_random) if f"random{i}" in s]
    prefix = result.get("prefix")
    out.update({"t6_n": len(rec), "t6_prefix_reward": None if prefix is None else float(np.mean(prefix)),
                "t6_no_hook": float(s["no_hook"].mean()), "t6_reconstruction": float(rec.mean()), "t6_related": float(s["related"].mean()),
                "t6_related_token_freq": mean_frequency(related, result["frequencies"])})
    pairs = [("no_hook", s["no_hook"], rec), ("related", s["related"], rec)]
    if draws:
        stacked = np.stack(draws)  # [draws, samples]: the CI resamples draws as well as samples
        out["t6_random"] = float(stacked.mean())
        out["t6_random_draw_deltas"] = [float((d - rec).mean()) for d in draws]
        out["t6_random_token_freq"] = float(np.mean([mean_frequency(z, result["frequencies"]) or 0.0 for z in result["randoms"].values()]))
        pairs += [("random", stacked, rec), ("related_vs_random", s["related"], stacked)]
    for name, a, b in pairs:
        delta, lo, hi = ablation.paired_delta(a, b, n_bootstrap, seed)
        out.update({f"t6_{name}_delta": delta, f"t6_{name}_ci_low": lo, f"t6_{name}_ci_high": hi})
    return out


def write_samples(path: Any, result: dict[str, Any] | None) -> None:
    """table6_samples.csv: one row per prefix / pair, its score under every condition (completion
    reward or DPO margin; `_full` = prefix + completion, the paper's quantity)."""
    cols: dict[str, np.ndarray] = {}
    if result:
        if result.get("prefix") is not None:
            cols["prefix_reward"] = result["prefix"]
        cols.update(result["samples"])
        cols.update({f"{k}_full": v for k, v in result.get("full", {}).items()})
    names = list(cols) or ["reconstruction", "related"]
    n = len(next(iter(cols.values()))) if cols else 0
    with io.atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["sample", *names])
        for i in range(n):
            w.writerow([i, *(f"{float(cols[c][i]):.6g}" for c in names)])

