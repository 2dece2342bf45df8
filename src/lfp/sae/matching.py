"""Matching a small dictionary to a large one (§3.2): how reproducible the learned features are.

Why separate: it only needs feature directions ([h, d] tensors), not SAEs or files, so any
architecture's `dictionary()` can be matched.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def dictionary_matching(small: torch.Tensor, large: torch.Tensor) -> dict[str, Any]:
    """Match a small dictionary [h1, d] to a large one [h2, d] by cosine of feature directions.

    Returns per small feature its max cosine to any large feature (`max_cos`), small-feature
    indices ranked by it (`ranked_features`, best first, ties by index), their mean (`mmcs`), and
    the one-to-one Hungarian matching maximising total cosine (`hungarian` [[i, j], ...] sorted by
    i, `hungarian_mean_cos`).
    """
    from scipy.optimize import linear_sum_assignment

    a = F.normalize(small.detach().double(), dim=1)
    b = F.normalize(large.detach().double(), dim=1)
    cos = (a @ b.t()).numpy()
    max_cos = cos.max(axis=1)
    ranked = np.lexsort((np.arange(len(max_cos)), -max_cos))
    rows, cols = linear_sum_assignment(cos, maximize=True)
    return {
        "max_cos": [float(v) for v in max_cos],
        "ranked_features": [int(i) for i in ranked],
        "mmcs": float(max_cos.mean()),
        "hungarian": [[int(i), int(j)] for i, j in zip(rows, cols)],
        "hungarian_mean_cos": float(cos[rows, cols].mean()),
    }


SHARED_COSINE = 0.7  # a Hungarian-matched pair with cosine above this counts as one feature found twice (Paulo & Belrose 2025)


def shared_fraction(matching: dict[str, Any], small: torch.Tensor, other: torch.Tensor) -> float:
    """The fraction of the small dictionary's features whose one-to-one (Hungarian) match in `other`
    has cosine > SHARED_COSINE."""
    pairs = np.asarray(matching["hungarian"], dtype=np.int64).reshape(-1, 2)
    if not len(pairs):
        return float("nan")
    a = F.normalize(small.detach().double(), dim=1)[pairs[:, 0]]
    b = F.normalize(other.detach().double(), dim=1)[pairs[:, 1]]
    return float(((a * b).sum(dim=1) > SHARED_COSINE).double().sum() / len(small))


def max_cosines(small: torch.Tensor, large: torch.Tensor) -> torch.Tensor:
    """Per small feature, its max cosine to any large feature (float64)."""
    return (F.normalize(small.double(), dim=1) @ F.normalize(large.double(), dim=1).t()).max(dim=1).values


def random_dictionary_mmcs(
    small: torch.Tensor, large: torch.Tensor, draws: int, seed: int, *, top_k: int | None = None
) -> dict[str, np.ndarray]:
    """The MMCS a dictionary of `large`'s shape reaches against `small` when it shares nothing with it.

    Why: in d dimensions a few hundred random directions already reach a max cosine of ~0.3 to any
    vector, so an MMCS means little without this null. Two nulls, `draws` each (seeded):
    `isotropic` rows ~ N(0, I) (a random dictionary of the same shape), and `covariance` rows ~
    N(0, Σ) with Σ the second moment of `large`'s unit rows (matched to the subspace the real
    dictionary occupies — stricter, since activations are anisotropic). Per draw: `mmcs` (mean max
    cosine over all small features) and, with `top_k`, `top_k_mean` (mean of the k largest max
    cosines: the statistic of the k best-matched, i.e. explained, features).
    """
    gen = torch.Generator().manual_seed(int(seed))
    unit = F.normalize(large.detach().double(), dim=1)
    second = unit.t() @ unit / len(unit)
    vals, vecs = torch.linalg.eigh(second)
    root = vecs * vals.clamp(min=0).sqrt()  # second = root @ root.T
    out: dict[str, np.ndarray] = {}
    for name, mix in (("isotropic", None), ("covariance", root)):
        mmcs, top = [], []
        for _ in range(draws):
            rand = torch.randn(tuple(large.shape), generator=gen, dtype=torch.float64)
            m = max_cosines(small.detach(), rand if mix is None else rand @ mix.t())
            mmcs.append(float(m.mean()))
            if top_k:
                top.append(float(m.topk(min(top_k, len(m))).values.mean()))
        out[f"{name}_mmcs"] = np.asarray(mmcs)
        if top_k:
            out[f"{name}_top_k_mean"] = np.asarray(top)
    return out
