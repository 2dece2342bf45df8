"""The sparse autoencoders as nn.Modules (§2, §3.2, App. F): the one definition of what an SAE
computes, shared by training, scoring, the stages' hooks and the file format.

Two architectures (`SparseAutoencoder.architecture`):

  relu_l1 ("paper method", the default): codes f = ReLU(W_E x + b_E), reconstruction
    x̂ = W_Dᵀ f + b_D, with W_D = W_E when tied (the paper's choice) or a separate decoder when
    `tied=False` (its Table 11 comparison). Loss (the paper's code): mean-squared error over all
    elements + l1 · mean over rows of ‖f‖₁, with the encoder rows renormalised to unit ℓ2 norm
    before every step so the penalty cannot be dodged by shrinking codes.
  topk (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"; SAELens's "topk"): codes
    keep the k largest pre-activations of each row after a ReLU, f = TopK_k(ReLU(W_E x + b_E)),
    and zero the rest, so L0 ≤ k by construction and no sparsity penalty is needed. Loss: the
    same MSE + `aux_coeff` · the dead-latent auxiliary loss (`topk_aux_loss`). Untied by default
    (as in the paper, SAELens and sparsify), with unit-norm decoder directions (the columns of
    `decoder_weight`) renormalised after every step and learning at a width-scaled rate
    (lfp.sae.train.decoder_lr_scale; removing the gradient along the directions, as Gao et al.
    do, changed FVU by < 2 % here and cost up to 1/3 of the speed); the encoder starts as the
    decoder's transpose, and
    training starts from b_D = the rows' mean, b_E = −W_E·mean (lfp.sae.train).
    `tied=True` gives a TopK SAE on the shared, unit-norm-row matrix.
    b_D is not subtracted from the input before encoding (SAELens's apply_b_dec_to_input false):
    b_E absorbs that shift, and the fast trainer stays one GEMM shorter.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURE_NAMES = ("relu_l1", "topk")
PAPER_METHOD = "relu_l1"


class SparseAutoencoder(nn.Module):
    """x̂ = W_Dᵀ σ(W_E x + b_E) + b_D with σ = ReLU (relu_l1) or TopK_k∘ReLU (topk);
    `dictionary()` rows are the features."""

    def __init__(self, d_in: int, d_hidden: int, *, tied: bool = True, architecture: str = PAPER_METHOD,
                 k: int | None = None) -> None:
        super().__init__()
        if architecture not in ARCHITECTURE_NAMES:
            raise ValueError(f"SparseAutoencoder: unknown architecture {architecture!r} (known: {', '.join(ARCHITECTURE_NAMES)})")
        if architecture == "topk":
            if k is None or not 1 <= int(k) <= int(d_hidden):
                raise ValueError(f"SparseAutoencoder: topk needs 1 <= k <= d_hidden={d_hidden}, got k={k!r}")
        elif k is not None:
            raise ValueError(f"SparseAutoencoder: k is a topk setting, got k={k!r} for {architecture!r}")
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
    def is_topk(self) -> bool:
        return self.architecture == "topk"

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """relu_l1: Xavier-uniform weights (unit-norm encoder rows), zero biases — the paper's init.
        topk: the same draws, then unit-norm decoder directions and the encoder = the decoder's
        transpose (Gao et al. §2.4), zero biases."""
        with torch.no_grad():
            for w in (self.encoder_weight, self.decoder_weight):
                if w is not None:
                    bound = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
                    w.uniform_(-bound, bound, generator=generator)
            self.encoder_bias.zero_()
            self.decoder_bias.zero_()
            if self.is_topk and self.decoder_weight is not None:
                normalize_columns_(self.decoder_weight)
                self.encoder_weight.copy_(self.decoder_weight.t())
            else:
                normalize_rows_(self.encoder_weight)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """W_E x + b_E, shape [..., d_hidden]."""
        return F.linear(x, self.encoder_weight, self.encoder_bias)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """σ(pre): ReLU, or ReLU of the k largest entries of each row and zeros elsewhere."""
        if not self.is_topk:
            return F.relu(pre)
        return topk_relu(pre, self.k)

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
        if self.is_topk and self.decoder_weight is not None:
            normalize_columns_(self.decoder_weight)
        else:
            normalize_rows_(self.encoder_weight)

    def loss(self, x: torch.Tensor, l1: float = 0.0, *, dead: torch.Tensor | None = None, aux_k: int = 0,
             aux_coeff: float = 0.0) -> torch.Tensor:
        """The training objective (autograd form). relu_l1: MSE over all elements + l1 ·
        mean_rows ‖f‖₁. topk: MSE + aux_coeff · `topk_aux_loss` over the `dead` latents."""
        pre = self.pre_activations(x)
        codes = self.activate(pre)
        x_hat = self.decode(codes)
        loss = F.mse_loss(x_hat, x)
        if not self.is_topk:
            return loss + l1 * codes.sum(dim=-1).mean()
        if dead is not None and aux_coeff > 0:
            loss = loss + aux_coeff * topk_aux_loss(self, x, x_hat, pre, dead, aux_k)
        return loss


def topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    """ReLU of the k largest entries of each row of `pre` (last dim), zeros elsewhere."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, indices, values.relu())


def aux_size(d_in: int, aux_k: int, n_dead: int) -> tuple[int, float]:
    """(k_aux, scale) of the auxiliary loss: k_aux = `aux_k` (0: d_in // 2, SAELens's and
    sparsify's heuristic) capped at the number of dead latents; scale = min(n_dead / k_aux, 1)
    so that a handful of dead latents do not get the full weight."""
    nominal = int(aux_k) if aux_k > 0 else max(1, d_in // 2)
    return min(nominal, n_dead), min(n_dead / nominal, 1.0)


def topk_aux_loss(sae: SparseAutoencoder, x: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor, dead: torch.Tensor,
                  aux_k: int = 0) -> torch.Tensor:
    """Gao et al.'s AuxK loss: the top-k_aux dead latents (ReLU'd pre-activations; `dead` a bool
    [d_hidden] mask) reconstruct the main reconstruction's residual e = x − x̂ (detached) through
    the decoder without bias; scale · mean over elements of (ê − e)². Zero when nothing is dead."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    k_aux, scale = aux_size(sae.d_in, aux_k, n_dead)
    masked = torch.where(dead, pre, torch.full_like(pre, -torch.inf))
    values, indices = masked.topk(k_aux, dim=-1, sorted=False)
    codes = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    e_hat = codes @ sae.decoder_rows()
    return scale * F.mse_loss(e_hat, (x - x_hat).detach())


class DeadLatents:
    """Which latents count as dead for the auxiliary loss: those that have not fired (code > 0)
    on any of the last `window` training rows (Gao et al.: 10M tokens; here rows, since the
    paper's budget is 75k rows)."""

    def __init__(self, d_hidden: int, window: int) -> None:
        self.window = int(window)
        self.rows_since = torch.zeros(d_hidden, dtype=torch.int64)
        self._fired = torch.empty(d_hidden, dtype=torch.bool)

    def mask(self) -> torch.Tensor:
        return self.rows_since >= self.window

    def update(self, codes: torch.Tensor) -> None:
        """After a step on a batch whose codes were `codes` [b, d_hidden]."""
        torch.gt(codes.amax(dim=0), 0, out=self._fired)  # codes ≥ 0: max > 0 ⟺ any > 0
        self.rows_since.add_(codes.shape[0]).masked_fill_(self._fired, 0)


def normalize_rows_(weight: torch.Tensor) -> None:
    """Scale each row to unit ℓ2 norm in place (a zero row stays zero)."""
    with torch.no_grad():
        weight.div_(torch.linalg.vector_norm(weight, dim=1, keepdim=True).clamp_min_(1e-12))


def normalize_columns_(weight: torch.Tensor) -> None:
    """Scale each column to unit ℓ2 norm in place (a zero column stays zero)."""
    with torch.no_grad():
        weight.div_(torch.linalg.vector_norm(weight, dim=0, keepdim=True).clamp_min_(1e-12))
