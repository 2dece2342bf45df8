"""Held-out reconstruction quality of an SAE (the numbers in reports/runs/{m}-{t}/sae.json).

Why separate: scoring reads activations in bounded chunks and needs only `encode`/`decode`, so
it works unchanged for every architecture.
"""

from __future__ import annotations

import numpy as np
import torch

from lfp.errors import ArtifactError
from lfp.sae.model import SparseAutoencoder
from lfp.sae.rows import as_float_tensor

EVAL_CHUNK_ROWS = 8192  # rows per chunk when scoring: bounds memory for any number of rows


@torch.no_grad()
def reconstruction_metrics(sae: SparseAutoencoder, acts: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Held-out quality: mse (mean over elements, the paper's reconstruction loss), fvu
    (Σ‖x−x̂‖² / Σ‖x−x̄‖²), l0 (mean active codes per row) and dead_fraction (features never active)."""
    n = int(acts.shape[0])
    if n == 0:
        raise ArtifactError("reconstruction_metrics: no held-out rows")
    sq_err = 0.0
    active = 0.0
    fired = torch.zeros(sae.d_hidden, dtype=torch.bool)
    s1 = torch.zeros(sae.d_in, dtype=torch.float64)
    s2 = torch.zeros((), dtype=torch.float64)
    for lo in range(0, n, EVAL_CHUNK_ROWS):
        x = as_float_tensor(acts[lo : lo + EVAL_CHUNK_ROWS])
        x_hat, codes = sae(x)
        sq_err += float((x_hat - x).double().pow(2).sum())
        on = codes > 0
        active += float(on.sum())
        fired |= on.any(dim=0)
        s1 += x.double().sum(0)
        s2 += x.double().pow(2).sum()
    total_var = float(s2 - s1.pow(2).sum() / n)
    return {
        "mse": sq_err / (n * sae.d_in),
        "fvu": sq_err / total_var if total_var > 0 else float("nan"),
        "l0": active / n,
        "dead_fraction": 1.0 - float(fired.float().mean()),
    }
