"""The SAE training step on the GEMM path chosen for this machine.

Why its own module: the arithmetic (lfp.sae.gradients) is timed by the choice of path
(lfp.sae.backend); the step that asks for that choice sits above both, so neither imports the
other back.
"""

from __future__ import annotations

from lfp.sae.backend import choose_backend
from lfp.sae.gradients import HandGradients
from lfp.sae.model import SparseAutoencoder


class GradientStep(HandGradients):
    """`HandGradients` whose GEMM path, when not given, is `lfp.sae.backend.choose_backend`'s
    (measured per machine for large SAEs)."""

    def __init__(self, sae: SparseAutoencoder, l1: float = 0.0, *, backend: str | None = None, aux_k: int = 0,
                 aux_coeff: float = 0.0, dead_window: int = 0) -> None:
        """`backend`: "mkl" or "onednn" (None: `choose_backend(sae)`); the rest as `HandGradients`."""
        if backend is None:
            backend = choose_backend(sae)
        super().__init__(sae, l1, backend=backend, aux_k=aux_k, aux_coeff=aux_coeff, dead_window=dead_window)
