"""The sparse autoencoder as an nn.Module (§2, §3.2, App. F): the one definition of what an SAE
computes, shared by training, scoring, the stages' hooks and the file format.

What differs between architectures (the codes' nonlinearity, loss terms, init, which matrix is kept
unit-norm) is asked of `self.arch`, the registered `Architecture` named by `architecture`
(lfp.sae.architectures: relu_l1, the paper method and the default; topk, Gao et al. 2024).
b_D is not subtracted from the input before encoding (SAELens's apply_b_dec_to_input false): b_E
absorbs that shift, and the fast trainer stays one GEMM shorter.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lfp.sae.architectures import PAPER_METHOD, architecture_named
from lfp.sae.norms import normalize_columns_, normalize_rows_


class SparseAutoencoder(nn.Module):
    """x̂ = W_Dᵀ σ(W_E x + b_E) + b_D with σ = ReLU (relu_l1) or TopK_k∘ReLU (topk);
    `dictionary()` rows are the features."""

    def __init__(self, d_in: int, d_hidden: int, *, tied: bool = True, architecture: str = PAPER_METHOD,
                 k: int | None = None) -> None:
        super().__init__()
        self.arch = architecture_named(architecture)
        self.arch.check(k, d_hidden)
        self.architecture = architecture  # the `lfp_architecture` of its files
        self.k = None if k is None else int(k)
        self.d_in = int(d_in)
        self.d_hidden = int(d_hidden)
        self.tied = bool(tied)
        self.encoder_weight = nn.Parameter(torch.empty(self.d_hidden, self.d_in))
        self.encoder_bias = nn.Parameter(torch.zeros(self.d_hidden))
        self.decoder_bias = nn.Parameter(torch.zeros(self.d_in))
        # nn.Linear(d_hidden, d_in) layout, as in the paper's untied variant
        self.decoder_weight = None if self.tied else nn.Parameter(torch.empty(self.d_in, self.d_hidden))

    @property
    def unit_norm_decoder(self) -> bool:
        """Whether the decoder directions, not the encoder rows, are kept unit-norm (untied topk)."""
        return self.arch.unit_norm_decoder(self.tied)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Xavier-uniform weights, zero biases, then the architecture's unit-norm init (relu_l1:
        unit-norm encoder rows, the paper's init; topk: see lfp.sae.architectures.topk)."""
        with torch.no_grad():
            for w in (self.encoder_weight, self.decoder_weight):
                if w is not None:
                    bound = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
                    w.uniform_(-bound, bound, generator=generator)
            self.encoder_bias.zero_()
            self.decoder_bias.zero_()
            self.arch.reset_(self)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """W_E x + b_E, shape [..., d_hidden]."""
        return F.linear(x, self.encoder_weight, self.encoder_bias)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """σ(pre): the architecture's nonlinearity (ReLU; topk: ReLU of the k largest entries)."""
        return self.arch.activate(pre, self.k)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature codes f = σ(W_E x + b_E), shape [..., d_hidden]."""
        return self.activate(self.pre_activations(x))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Reconstruction W_Dᵀ f + b_D, shape [..., d_in]."""
        if self.decoder_weight is None:
            return codes @ self.encoder_weight + self.decoder_bias
        return F.linear(codes, self.decoder_weight, self.decoder_bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, codes)."""
        codes = self.encode(x)
        return self.decode(codes), codes

    def decoder_rows(self) -> torch.Tensor:
        """W_D as [d_hidden, d_in] (a view, with autograd): row j is feature j's direction."""
        return self.encoder_weight if self.decoder_weight is None else self.decoder_weight.t()

    def dictionary(self) -> torch.Tensor:
        """The decoder's feature directions, one row per feature: [d_hidden, d_in]."""
        return self.decoder_rows().detach()

    def normalize_(self) -> None:
        """The unit-norm constraint: encoder rows (relu_l1, and tied topk) or decoder directions
        (untied topk)."""
        if self.unit_norm_decoder and self.decoder_weight is not None:
            normalize_columns_(self.decoder_weight)
        else:
            normalize_rows_(self.encoder_weight)

    def loss(self, x: torch.Tensor, l1: float = 0.0, *, dead: torch.Tensor | None = None, aux_k: int = 0,
             aux_coeff: float = 0.0) -> torch.Tensor:
        """The training objective (autograd form): MSE over all elements + the architecture's terms
        (relu_l1: l1 · mean_rows ‖f‖₁; topk: aux_coeff · the AuxK loss over the `dead` latents)."""
        pre = self.pre_activations(x)
        codes = self.activate(pre)
        x_hat = self.decode(codes)
        return self.arch.add_loss(self, F.mse_loss(x_hat, x), x, pre, codes, x_hat, l1=l1, dead=dead, aux_k=aux_k,
                                  aux_coeff=aux_coeff)
