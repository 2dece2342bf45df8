"""Cached activation rows → the float32 CPU tensors that training and scoring read.

Why a module: the trainer and the quality metrics must pick and convert rows the same way, and
the trainer is a CPU loop by design (the stages move trained SAEs to their device afterwards).
"""

from __future__ import annotations

import numpy as np
import torch


def select_rows(n_rows: int, max_rows: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset of at most `max_rows` rows (sorted: memmap-friendly)."""
    if max_rows is None or n_rows <= max_rows:
        return np.arange(n_rows)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_rows, size=max_rows, replace=False))


def as_float_tensor(acts: np.ndarray | torch.Tensor, rows: np.ndarray | None = None) -> torch.Tensor:
    """Rows of an array/memmap/tensor as one contiguous float32 CPU tensor (a copy for memmaps)."""
    if isinstance(acts, torch.Tensor):
        t = acts.detach().to("cpu", torch.float32)
        return (t if rows is None else t[torch.from_numpy(rows)]).contiguous()
    arr = acts if rows is None else acts[rows]
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
