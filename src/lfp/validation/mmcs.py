"""MMCS of the small vs large dictionary beside random dictionaries of the large one's shape:
"shared features" must beat what a dictionary of random directions already reaches."""

from __future__ import annotations

from typing import Any

import numpy as np


def mmcs_with_null(
    dictionaries: dict[int, tuple[Any, Any]], explained: dict[int, list[int]], draws: int, seed: int,
) -> dict[str, Any]:
    """Observed MMCS (small vs large dictionary) per layer and over layers, beside the MMCS of
    `draws` random dictionaries of the large one's shape (mean and the 2.5–97.5 % range of the
    draws' layer means; isotropic and second-moment matched), also for the explained features only
    (their mean max cosine vs the mean of as many top max cosines in a random dictionary)."""
    from lfp.sae import max_cosines, random_dictionary_mmcs

    out: dict[str, Any] = {}
    obs, obs_expl = [], []
    null: dict[str, list[np.ndarray]] = {}
    for layer, (small, large) in sorted(dictionaries.items()):
        max_cos = max_cosines(small, large).numpy()
        feats = explained.get(layer, [])
        r = random_dictionary_mmcs(small, large, draws, seed + layer, top_k=len(feats) or None)
        out[f"layer{layer}_mmcs"] = float(max_cos.mean())
        out[f"layer{layer}_mmcs_random_dictionary"] = float(r["isotropic_mmcs"].mean())
        out[f"layer{layer}_mmcs_random_dictionary_cov"] = float(r["covariance_mmcs"].mean())
        obs.append(max_cos.mean())
        for key, v in r.items():
            null.setdefault(key, []).append(v)
        if feats:
            obs_expl.append(max_cos[feats].mean())
    if not obs:
        return out
    out["mmcs_shared"] = float(np.mean(obs))
    for name, suffix in (("isotropic", ""), ("covariance", "_cov")):
        for stat, key in (("mmcs", "mmcs_random_dictionary"), ("top_k_mean", "mmcs_explained_random_dictionary")):
            if f"{name}_{stat}" not in null or (stat == "top_k_mean" and len(null[f"{name}_{stat}"]) != len(obs_expl)):
                continue
            per_draw = np.mean(null[f"{name}_{stat}"], axis=0)  # layer mean, one per draw
            lo, hi = np.quantile(per_draw, [0.025, 0.975])
            out.update({key + suffix: float(per_draw.mean()), f"{key}{suffix}_ci_low": float(lo), f"{key}{suffix}_ci_high": float(hi)})
    if obs_expl:
        out["mmcs_explained"] = float(np.mean(obs_expl))
    return out

