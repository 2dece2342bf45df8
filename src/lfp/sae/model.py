"""The paper's sparse autoencoder as an nn.Module (§2, §3.2, App. F): the one definition of what
an SAE computes, shared by training, scoring, the stages' hooks and the file format.

Codes f = ReLU(W_E x + b_E), reconstruction x̂ = W_Dᵀ f + b_D, with W_D = W_E when tied (the
paper's choice) or a separate decoder when `tied=False` (its Table 11 comparison). Loss (the
paper's code): mean-squared error over all elements + l1 · mean over rows of ‖f‖₁, with the
encoder rows renormalised to unit ℓ2 norm before every step so the penalty cannot be dodged by
shrinking codes.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn


class SparseAutoencoder(nn.Module):
    """x̂ = W_Dᵀ ReLU(W_E x + b_E) + b_D; `encoder_weight` rows are the dictionary features."""

    architecture: ClassVar[str] = "relu_l1"  # the paper's method; the `lfp_architecture` of its files

    def __init__(self, d_in: int, d_hidden: int, *, tied: bool = True) -> None:
        super().__init__()
        self.d_in = int(d_in)
        self.d_hidden = int(d_hidden)
        self.tied = bool(tied)
        self.encoder_weight = nn.Parameter(torch.empty(self.d_hidden, self.d_in))
        self.encoder_bias = nn.Parameter(torch.zeros(self.d_hidden))
        self.decoder_bias = nn.Parameter(torch.zeros(self.d_in))
        # nn.Linear(d_hidden, d_in) layout, as in the paper's untied variant
        self.decoder_weight = None if self.tied else nn.Parameter(torch.empty(self.d_in, self.d_hidden))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Xavier-uniform weights (unit-norm encoder rows), zero biases — the paper's init."""
        with torch.no_grad():
            for w in (self.encoder_weight, self.decoder_weight):
                if w is not None:
                    bound = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
                    w.uniform_(-bound, bound, generator=generator)
            self.encoder_bias.zero_()
            self.decoder_bias.zero_()
            normalize_rows_(self.encoder_weight)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature codes f = ReLU(W_E x + b_E), shape [..., d_hidden]."""
        return F.relu(F.linear(x, self.encoder_weight, self.encoder_bias))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Reconstruction W_Dᵀ f + b_D, shape [..., d_in]."""
        if self.decoder_weight is None:
            return codes @ self.encoder_weight + self.decoder_bias
        return F.linear(codes, self.decoder_weight, self.decoder_bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, codes)."""
        codes = self.encode(x)
        return self.decode(codes), codes

    def dictionary(self) -> torch.Tensor:
        """The decoder's feature directions, one row per feature: [d_hidden, d_in]."""
        return (self.encoder_weight if self.decoder_weight is None else self.decoder_weight.t()).detach()

    def loss(self, x: torch.Tensor, l1: float) -> torch.Tensor:
        """The training objective: MSE over all elements + l1 · mean_rows ‖f‖₁ (autograd form)."""
        x_hat, codes = self(x)
        return F.mse_loss(x_hat, x) + l1 * codes.sum(dim=-1).mean()


def normalize_rows_(weight: torch.Tensor) -> None:
    """Scale each row to unit ℓ2 norm in place (a zero row stays zero)."""
    with torch.no_grad():
        weight.div_(torch.linalg.vector_norm(weight, dim=1, keepdim=True).clamp_min_(1e-12))
