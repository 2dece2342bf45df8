"""The SAEs' training step with hand-derived gradients on a given GEMM path (MKL or oneDNN).

Why: at batch 32 every GEMM is tiny and autograd spends as much time in dispatch as in
arithmetic. `HandGradients` computes the same loss and gradients as `SparseAutoencoder.loss`
+ backward (tests/test_sae.py and tests/test_sae_topk.py check it against the autograd
reference) with preallocated buffers; the arithmetic of each architecture is its own
(`Architecture.hand_step`, lfp.sae.architectures), this class holds the state it works on. Which
path is fastest here is not decided here: lfp.sae.step.GradientStep asks lfp.sae.backend, which
times this class on both paths (oneDNN ran 2x MKL's speed on an AMD EPYC, 0.9x on an Intel CPU).
"""

from __future__ import annotations

from typing import Any

import torch

import lfp.sae.gemm as gemm
from lfp.sae.architectures.base import DeadTracker
from lfp.sae.model import SparseAutoencoder


class HandGradients:
    """One training step with hand-derived gradients (no autograd), buffers reused across steps:
    the state an `Architecture.hand_step` reads (lfp.sae.architectures.base.StepState)."""

    def __init__(self, sae: SparseAutoencoder, l1: float = 0.0, *, backend: str, aux_k: int = 0,
                 aux_coeff: float = 0.0, dead_window: int = 0) -> None:
        """`backend`: "mkl" or "onednn" (one of `gemm.backends_for(sae)`); the auxiliary loss (topk)
        reads `aux_k` (0: d_in // 2) and `aux_coeff` (0: none) over the latents dead for
        `dead_window` rows."""
        self.sae = sae
        self.l1 = float(l1)
        if backend not in gemm.backends_for(sae):
            raise ValueError(f"GradientStep: backend {backend!r} is not available for a {sae.architecture} SAE here "
                             f"(available: {', '.join(gemm.backends_for(sae))})")
        self.backend = backend
        self.linear: Any = gemm.ONEDNN_LINEAR if backend == "onednn" else None
        self.aux_k, self.aux_coeff = int(aux_k), float(aux_coeff)
        self.dead: DeadTracker | None = sae.arch.dead_latents(sae.d_hidden, dead_window, self.aux_coeff)
        self.buffers: dict[int, dict[str, torch.Tensor]] = {}
        for p in sae.parameters():
            p.grad = torch.zeros_like(p)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Write the gradients of the loss on batch `x` into `.grad`; return the loss (0-d)."""
        return self.sae.arch.hand_step(self, x)
