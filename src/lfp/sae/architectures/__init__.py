"""SAE architectures behind one registry, as SAELens does: each module holds everything one
architecture decides (its codes' nonlinearity, its loss terms and their hand-derived gradients,
its init and unit-norm constraint, its SAELens cfg fields and their checks, what the sae stage
records), and the model, the trainer, the files and the stage ask `ARCHITECTURES` instead of
comparing names.

  base     Architecture (the interface), SaeWeights / StepState (what it sees of the model and step)
  relu_l1  the paper method (tied ReLU + l1; the default)
  topk     Gao et al. 2024 (k largest codes, AuxK loss on dead latents)

A new architecture: one module implementing `Architecture`, one line below, and its name in the
params schema's `sae.architecture` literal (lfp.core.sections; tests/test_sae_topk.py checks they agree).
"""

from __future__ import annotations

from lfp.sae.architectures.base import Architecture
from lfp.sae.architectures.relu_l1 import RELU_L1
from lfp.sae.architectures.topk import TOPK

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (RELU_L1, TOPK)}
PAPER_METHOD = RELU_L1.name


def architecture_named(name: str, who: str = "SparseAutoencoder") -> Architecture:
    """The registered architecture `name`; ValueError naming `who` and the known ones otherwise."""
    arch = ARCHITECTURES.get(name)
    if arch is None:
        raise ValueError(f"{who}: unknown architecture {name!r} (known: {', '.join(ARCHITECTURES)})")
    return arch


__all__ = ["ARCHITECTURES", "PAPER_METHOD", "Architecture", "architecture_named"]
