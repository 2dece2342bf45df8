"""Held-out reconstruction quality of an SAE (the numbers in reports/runs/{m}-{t}/sae.json):
on activations (mse, fvu, l0, dead latents) and through the LM (its next-token cross-entropy with
a layer's MLP output replaced by the reconstruction, and the share of the loss it recovers).

Why separate: scoring reads activations in bounded chunks and needs only `encode`/`decode`, so
it works unchanged for every architecture.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lfp.core.errors import ArtifactError
from lfp.sae.model import SparseAutoencoder
from lfp.sae.rows import as_float_tensor

EVAL_CHUNK_ROWS = 8192  # rows per chunk when scoring: bounds memory for any number of rows


def l0_edges(d_hidden: int) -> list[int]:
    """Histogram bin edges for per-row L0 in 0..d_hidden: [0, 1, 2, 4, 8, …, d_hidden + 1]; bin i
    counts rows with edges[i] ≤ L0 < edges[i+1] (powers of two: dense relu_l1 codes and TopK's
    L0 ≤ k both stay readable)."""
    edges, e = [0, 1], 2
    while e <= d_hidden:
        edges.append(e)
        e *= 2
    return edges + [d_hidden + 1]


@torch.no_grad()
def reconstruction_metrics(sae: SparseAutoencoder, acts: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """Held-out quality: mse (mean over elements, the paper's reconstruction loss), fvu
    (Σ‖x−x̂‖² / Σ‖x−x̄‖²), l0 (mean active codes per row), dead_fraction and dead_count (features
    never active on these rows), and l0_histogram {"edges", "counts"} (rows per L0 bin,
    `l0_edges`; not a number, so MLflow skips it and the metrics JSON keeps it)."""
    n = int(acts.shape[0])
    if n == 0:
        raise ArtifactError("reconstruction_metrics: no held-out rows")
    sq_err = 0.0
    active = 0.0
    fired = torch.zeros(sae.d_hidden, dtype=torch.bool)
    edges = l0_edges(sae.d_hidden)
    counts = torch.zeros(len(edges) - 1, dtype=torch.int64)
    boundaries = torch.tensor(edges[1:-1])
    s1 = torch.zeros(sae.d_in, dtype=torch.float64)
    s2 = torch.zeros((), dtype=torch.float64)
    for lo in range(0, n, EVAL_CHUNK_ROWS):
        x = as_float_tensor(acts[lo : lo + EVAL_CHUNK_ROWS])
        x_hat, codes = sae(x)
        sq_err += float((x_hat - x).double().pow(2).sum())
        on = codes > 0
        active += float(on.sum())
        fired |= on.any(dim=0)
        per_row = on.sum(dim=-1).reshape(-1)
        counts += torch.bincount(torch.bucketize(per_row, boundaries, right=True), minlength=len(counts))
        s1 += x.double().sum(0)
        s2 += x.double().pow(2).sum()
    total_var = float(s2 - s1.pow(2).sum() / n)
    return {
        "mse": sq_err / (n * sae.d_in),
        "fvu": sq_err / total_var if total_var > 0 else float("nan"),
        "l0": active / n,
        "dead_fraction": 1.0 - float(fired.float().mean()),
        "dead_count": int((~fired).sum()),
        "l0_histogram": {"edges": edges, "counts": counts.tolist()},
    }


CE_BATCH = 8  # texts per forward pass when scoring cross-entropy


@torch.inference_mode()
def cross_entropy(model: Any, sequences: list[np.ndarray], pad_id: int, device: torch.device | str) -> float:
    """Mean next-token cross-entropy over all real (non-padding) target tokens."""
    total, count = 0.0, 0
    for lo in range(0, len(sequences), CE_BATCH):
        seqs = sequences[lo : lo + CE_BATCH]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.bool)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.from_numpy(s)
            mask[i, : len(s)] = True
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask.long(), use_cache=False).logits[:, :-1].float()
        target_mask = mask[:, 1:]
        losses = torch.nn.functional.cross_entropy(logits[target_mask], ids[:, 1:][target_mask], reduction="sum")
        total += float(losses)
        count += int(target_mask.sum())
    if count == 0:
        raise ArtifactError("sae: the cross-entropy texts have no next-token targets (all one token long)")
    return total / count


def reconstruction_hook(sae: SparseAutoencoder):
    def replace(out: torch.Tensor) -> torch.Tensor:
        return sae(out.float())[0].to(out.dtype)

    return replace


def ce_recovered(clean: float, recon: float, zero: float) -> float:
    denom = zero - clean
    return (zero - recon) / denom if abs(denom) > 1e-12 else float("nan")
