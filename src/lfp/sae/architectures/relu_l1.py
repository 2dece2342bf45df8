"""relu_l1, the paper method (§2, §3.2, App. F; the default): codes f = ReLU(W_E x + b_E),
reconstruction x̂ = W_Dᵀ f + b_D with W_D = W_E when tied (the paper's choice) or a separate
decoder (`tied=False`, its Table 11 comparison). Loss (the paper's code): mean-squared error over
all elements + l1 · mean over rows of ‖f‖₁, the encoder rows renormalised to unit ℓ2 norm before
every step so the penalty cannot be dodged by shrinking codes. SAELens: "standard".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lfp.sae.architectures.base import DeadTracker, SaeWeights, StepState
from lfp.sae.norms import normalize_rows_


class ReluL1:
    """The paper's tied ReLU + l1 SAE (see the module docstring)."""

    name = "relu_l1"
    saelens_architecture = "standard"
    saelens_fixed: dict[str, Any] = {}

    def settings(self, k: int | None, tied: bool | None) -> dict[str, Any]:
        """Tied unless told otherwise (the paper); `k` is not read."""
        return {"architecture": self.name, "k": None, "tied": True if tied is None else bool(tied)}

    def check(self, k: int | None, d_hidden: int) -> None:
        if k is not None:
            raise ValueError(f"SparseAutoencoder: k is a topk setting, got k={k!r} for {self.name!r}")

    def unit_norm_decoder(self, tied: bool) -> bool:
        return False

    def reset_(self, sae: SaeWeights) -> None:
        normalize_rows_(sae.encoder_weight)

    def init_from_data_(self, sae: SaeWeights, data: torch.Tensor) -> None:
        return None

    def activate(self, pre: torch.Tensor, k: int | None) -> torch.Tensor:
        return F.relu(pre)

    def trained_l1(self, l1: float) -> float:
        return l1

    def recorded(self, l1: float, k: int | None) -> tuple[float | None, int | None]:
        return l1, None

    def dead_latents(self, d_hidden: int, window: int, aux_coeff: float) -> DeadTracker | None:
        return None

    def add_loss(self, sae: SaeWeights, mse: torch.Tensor, x: torch.Tensor, pre: torch.Tensor, codes: torch.Tensor,
                 x_hat: torch.Tensor, *, l1: float, dead: torch.Tensor | None, aux_k: int,
                 aux_coeff: float) -> torch.Tensor:
        """MSE + l1 · mean_rows ‖f‖₁."""
        return mse + l1 * codes.sum(dim=-1).mean()

    def hand_step(self, state: StepState, x: torch.Tensor) -> torch.Tensor:
        """On oneDNN where the step has its linear op, else torch.mm (MKL); see `_onednn`, `_mm`."""
        return _onednn(state, x) if state.linear is not None else _mm(state, x)

    def cfg_fields(self, sae: SaeWeights) -> dict[str, Any]:
        return {}

    def check_cfg(self, cfg: dict[str, Any], path: Path) -> None:
        return None


RELU_L1 = ReluL1()


# The hand-derived step. With r = x̂ − x, g = 2r/(B·n), mask = [W_E x + b_E > 0]:
#   ∂b_D = Σ_rows g;  ∂f = g W_D + l1/B;  ∂pre = ∂f ⊙ mask;  ∂b_E = Σ_rows ∂pre;
#   tied:   ∂W = ∂preᵀ x + fᵀ g  (computed as ONE GEMM [∂pre; f]ᵀ [x; g], K = 2B);
#   untied: ∂W_E = ∂preᵀ x,  ∂W_D = gᵀ f.
# Two implementations of the same arithmetic:
#   oneDNN (`_onednn`; where torch has it, the SAE is large enough and torch.backends.mkldnn is
#     enabled): codes and ∂f are computed transposed, fᵀ = ReLU(W xᵀ + b_E) and ∂fᵀ = W gᵀ ([h, B]:
#     oneDNN runs these ~20 % faster than the [B, h] orientation, and they land directly in the
#     [∂pre; f]ᵀ operand of the weight-gradient GEMM, so that needs no transpose); `− x` is fused
#     into the decoder GEMM; weight gradients come back as fresh tensors assigned to `.grad`.
#   torch.mm (`_mm`, MKL): everything in [B, ·] orientation, written into the `.grad` buffers;
#     transposed left operands are first copied into contiguous buffers (~20 % faster so).


def _buf(state: StepState, b: int) -> dict[str, torch.Tensor]:
    if b not in state.buffers:
        h, n = state.sae.d_hidden, state.sae.d_in
        state.buffers[b] = {
            "pre": torch.empty(b, h), "left": torch.empty(2 * b, h), "right": torch.empty(2 * b, n),
            "left_t": torch.empty(h, 2 * b), "g_t": torch.empty(n, b),
            "df": torch.empty(b, h), "f": torch.empty(b, h), "dpre_t": torch.empty(h, b),
            "bias_t": torch.empty(h, b),
        }
    return state.buffers[b]


def _onednn(state: StepState, x: torch.Tensor) -> torch.Tensor:
    sae, l1, linear = state.sae, state.l1, state.linear
    b, h = x.shape[0], sae.d_hidden
    buf = _buf(state, b)
    W = sae.encoder_weight.data
    WD_lin = W.t() if sae.decoder_weight is None else sae.decoder_weight.data  # decoder as linear weight [n, h]
    f, left_t, right, bias_t = buf["f"], buf["left_t"], buf["right"], buf["bias_t"]
    bias_t.copy_(sae.encoder_bias.data[:, None].expand(h, b))  # b_E down the columns of preᵀ
    f_t = linear.binary(W, bias_t, x, None, "add").relu_()  # fᵀ = ReLU(W xᵀ + b_E), [h, b]
    f.copy_(f_t.t())
    g = linear.binary(f, x, WD_lin, sae.decoder_bias.data, "sub")  # x̂ − x
    flat = g.view(-1)
    loss = torch.dot(flat, flat) / flat.numel() + (l1 / b) * f_t.sum()
    g.mul_(2.0 / g.numel())
    torch.sum(g, 0, out=sae.decoder_bias.grad)
    threshold_backward = torch.ops.aten.threshold_backward.grad_input  # ∂f ⊙ [f > 0], as autograd's ReLU
    if sae.decoder_weight is None:
        df_t = linear(W, g, None, "none", [], "")  # ∂fᵀ = W gᵀ (before + l1/B)
        df_t.add_(l1 / b)
        dpre_t = left_t[:, :b]
        threshold_backward(df_t, f_t, 0.0, grad_input=dpre_t)
        torch.sum(dpre_t, 1, out=sae.encoder_bias.grad)
        left_t[:, b:].copy_(f_t)
        right[:b].copy_(x)
        right[b:].copy_(g)
        sae.encoder_weight.grad = linear(left_t, right.t(), None, "none", [], "")
    else:
        df = linear(g, WD_lin.t(), None, "none", [], "")  # [b, h]: W_D's rows are not contiguous
        df.add_(l1 / b)
        dpre, dpre_t, g_t = buf["df"], buf["dpre_t"], buf["g_t"]
        threshold_backward(df, f, 0.0, grad_input=dpre)
        torch.sum(dpre, 0, out=sae.encoder_bias.grad)
        dpre_t.copy_(dpre.t())
        sae.encoder_weight.grad = linear(dpre_t, x.t(), None, "none", [], "")
        g_t.copy_(g.t())
        sae.decoder_weight.grad = linear(g_t, f_t, None, "none", [], "")
    return loss


def _mm(state: StepState, x: torch.Tensor) -> torch.Tensor:
    sae, l1 = state.sae, state.l1
    b = x.shape[0]
    buf = _buf(state, b)
    W = sae.encoder_weight.data
    WD = W if sae.decoder_weight is None else sae.decoder_weight.data.t()  # [h, n]
    pre, left, right, df = buf["pre"], buf["left"], buf["right"], buf["df"]
    f, dpre = left[b:], left[:b]
    xs, g = right[:b], right[b:]
    torch.addmm(sae.encoder_bias.data, x, W.t(), out=pre)
    torch.clamp_min(pre, 0.0, out=f)
    torch.addmm(sae.decoder_bias.data, f, WD, out=g)
    g.sub_(x)
    flat = g.view(-1)
    loss = torch.dot(flat, flat) / flat.numel() + (l1 / b) * f.sum()
    g.mul_(2.0 / g.numel())
    torch.sum(g, 0, out=sae.decoder_bias.grad)
    torch.mm(g, WD.t(), out=df)
    df.add_(l1 / b)
    torch.ops.aten.threshold_backward.grad_input(df, f, 0.0, grad_input=dpre)  # ∂f ⊙ [f > 0], as autograd's ReLU
    torch.sum(dpre, 0, out=sae.encoder_bias.grad)
    left_t = buf["left_t"]
    if sae.decoder_weight is None:
        xs.copy_(x)
        left_t.copy_(left.t())
        torch.mm(left_t, right, out=sae.encoder_weight.grad)
    else:
        dpre_t = left_t[:, :b]
        dpre_t.copy_(dpre.t())
        torch.mm(dpre_t, x, out=sae.encoder_weight.grad)
        buf["g_t"].copy_(g.t())
        torch.mm(buf["g_t"], f, out=sae.decoder_weight.grad)
    return loss
