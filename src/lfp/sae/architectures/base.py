"""What an SAE architecture decides, as one interface (`Architecture`), and the views of the model
and of the training step an architecture works on (`SaeWeights`, `StepState`).

Why protocols rather than imports: lfp.sae.model and lfp.sae.gradients ask the architecture, so
the architectures cannot import them back (no import cycle); they see the SAE and the step through
these attribute lists instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch


class SaeWeights(Protocol):
    """The parts of lfp.sae.model.SparseAutoencoder an architecture reads and writes."""

    d_in: int
    d_hidden: int
    k: int | None
    tied: bool
    encoder_weight: torch.nn.Parameter
    encoder_bias: torch.nn.Parameter
    decoder_bias: torch.nn.Parameter
    decoder_weight: torch.nn.Parameter | None

    def decoder_rows(self) -> torch.Tensor: ...


class DeadTracker(Protocol):
    """Which latents are dead for an auxiliary loss (lfp.sae.architectures.topk.DeadLatents)."""

    def mask(self) -> torch.Tensor: ...

    def update(self, codes: torch.Tensor) -> None: ...


class StepState(Protocol):
    """What a hand-derived training step reads from lfp.sae.gradients.HandGradients: the SAE, the
    trained l1, the oneDNN linear op (None: torch.mm / MKL), the auxiliary-loss settings, the dead
    tracker and the per-batch-size buffers."""

    sae: SaeWeights
    l1: float
    linear: Any
    aux_k: int
    aux_coeff: float
    dead: DeadTracker | None
    buffers: dict[int, dict[str, torch.Tensor]]


class Architecture(Protocol):
    """One SAE architecture: everything that differs between them, so that the model, the trainer,
    the files and the sae stage ask this object instead of comparing names.

    name: the params' `sae.architecture` and the files' `lfp_architecture`;
    saelens_architecture / saelens_fixed: cfg.json's `architecture` and the extra cfg fields whose
    value the model assumes (checked on load); centred_init: training starts from the rows' mean."""

    name: str
    saelens_architecture: str
    saelens_fixed: Mapping[str, Any]

    def settings(self, k: int | None, tied: bool | None) -> dict[str, Any]:
        """The model's `architecture`, `k`, `tied` with this architecture's defaults filled in."""
        ...

    def check(self, k: int | None, d_hidden: int) -> None:
        """Raise ValueError (naming SparseAutoencoder) when `k` does not fit this architecture."""
        ...

    def unit_norm_decoder(self, tied: bool) -> bool:
        """True: the decoder directions (columns of decoder_weight) are kept unit-norm and learn
        at their own rate; False: the encoder rows are (the paper)."""
        ...

    def reset_(self, sae: SaeWeights) -> None:
        """After the Xavier draws: this architecture's unit-norm init."""
        ...

    def init_from_data_(self, sae: SaeWeights, data: torch.Tensor) -> None:
        """Before training, from the training rows (a no-op for the paper's SAE)."""
        ...

    def activate(self, pre: torch.Tensor, k: int | None) -> torch.Tensor:
        """The codes' nonlinearity σ(pre)."""
        ...

    def trained_l1(self, l1: float) -> float:
        """The l1 coefficient actually trained (0 where sparsity comes from the architecture)."""
        ...

    def recorded(self, l1: float, k: int | None) -> tuple[float | None, int | None]:
        """(l1, k) as the sae stage records them: None for the one that does not apply."""
        ...

    def dead_latents(self, d_hidden: int, window: int, aux_coeff: float) -> DeadTracker | None:
        """A tracker of dead latents when this architecture trains an auxiliary loss on them."""
        ...

    def add_loss(self, sae: SaeWeights, mse: torch.Tensor, x: torch.Tensor, pre: torch.Tensor, codes: torch.Tensor,
                 x_hat: torch.Tensor, *, l1: float, dead: torch.Tensor | None, aux_k: int,
                 aux_coeff: float) -> torch.Tensor:
        """The training objective (autograd form): `mse` plus this architecture's terms."""
        ...

    def hand_step(self, state: StepState, x: torch.Tensor) -> torch.Tensor:
        """The same objective's gradients written into `.grad` by hand; returns the loss (0-d)."""
        ...

    def cfg_fields(self, sae: SaeWeights) -> dict[str, Any]:
        """cfg.json fields read from the model (e.g. k)."""
        ...

    def check_cfg(self, cfg: dict[str, Any], path: Path) -> None:
        """Validate those fields on load (ArtifactError naming `path`)."""
        ...
