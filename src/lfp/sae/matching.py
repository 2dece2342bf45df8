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
