"""The GEMM paths the SAE training step can run on this machine: MKL (torch.mm) and oneDNN.

Why its own module: both the step (lfp.sae.gradients) and the per-machine choice between the paths
(lfp.sae.backend) ask what is available here; neither owns the answer.
"""

from __future__ import annotations

import platform
from typing import Any

import torch

from lfp.sae.model import SparseAutoencoder


def onednn_linear() -> Any:
    """torch's oneDNN linear op (y = x Wᵀ + b, optionally fused with a ReLU or `± other`), or None
    on builds without it or off x86-64 (where it was not measured). Why not torch.mm: where MKL
    runs its AVX2 kernels (AMD CPUs) oneDNN's AVX-512 JIT runs these batch-32 GEMMs ~2x faster,
    but its ~15 µs overhead per call outweighs that on small SAEs, hence `ONEDNN_MIN_WEIGHTS`;
    on Intel CPUs MKL can win at any size, hence the measured choice (`lfp.sae.backend`)."""
    try:
        if torch.backends.mkldnn.is_available() and platform.machine().lower() in ("x86_64", "amd64"):
            return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without the op
        pass
    return None  # pragma: no cover


ONEDNN_LINEAR = onednn_linear()
# MKL always at or below this d_in·d_hidden; above it the faster path is measured per machine
# (lfp.sae.backend). Break-even on a 2-core AMD EPYC: equal at 128x256 and 512x64; oneDNN 1.27x
# slower at 128x128, 0.82x time at 128x512, 0.56x at 512x1024. Below it oneDNN's per-call overhead
# loses on every CPU measured, and a fixed rule keeps small SAEs' weights the same on every run.
ONEDNN_MIN_WEIGHTS = 1 << 15
BACKENDS = ("mkl", "onednn")


def backend_available(backend: str) -> bool:
    """Whether `GradientStep` can run `backend` here ("onednn" needs torch's oneDNN linear op,
    x86-64 and torch.backends.mkldnn enabled)."""
    if backend == "onednn":
        return ONEDNN_LINEAR is not None and torch.backends.mkldnn.enabled
    return backend == "mkl"


def backends_for(sae: SparseAutoencoder) -> tuple[str, ...]:
    """The GEMM paths `GradientStep` can run for this SAE here."""
    return tuple(b for b in BACKENDS if backend_available(b))
