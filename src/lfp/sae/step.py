"""The relu_l1 SAE's training step with hand-derived gradients, on two GEMM backends.

Why: at batch 32 every GEMM is tiny and autograd spends as much time in dispatch as in
arithmetic. `GradientStep` computes the same loss and gradients as `SparseAutoencoder.loss`
+ backward (tests/test_sae.py checks it against the autograd reference) with preallocated
buffers, the tied weight gradient as one GEMM, and, for large SAEs, oneDNN instead of MKL (2x
MKL's speed on AMD CPUs).
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
    but its ~15 µs overhead per call outweighs that on small SAEs, hence `ONEDNN_MIN_WEIGHTS`."""
    try:
        if torch.backends.mkldnn.is_available() and platform.machine().lower() in ("x86_64", "amd64"):
            return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without the op
        pass
    return None  # pragma: no cover


ONEDNN_LINEAR = onednn_linear()
# oneDNN only for d_in·d_hidden above this: the measured break-even on a 2-core AMD EPYC (equal
# at 128x256 and 512x64; oneDNN 1.27x slower at 128x128, 0.82x at 128x512, 0.56x at 512x1024)
ONEDNN_MIN_WEIGHTS = 1 << 15


def normalize_rows_with_(weight: torch.Tensor, norms: torch.Tensor) -> None:
    """`normalize_rows_` for the training loop: the row norms go into the [rows, 1] buffer `norms`
    and the rows are multiplied by their reciprocals (the same result to within one rounding; a
    division costs twice the multiplication here, ~2 % of a step)."""
    torch.linalg.vector_norm(weight, dim=1, keepdim=True, out=norms)
    weight.mul_(norms.clamp_min_(1e-12).reciprocal_())


class GradientStep:
    """One training step with hand-derived gradients (no autograd), buffers reused across steps.

    With r = x̂ − x, g = 2r/(B·n), mask = [W_E x + b_E > 0]:
      ∂b_D = Σ_rows g;  ∂f = g W_D + l1/B;  ∂pre = ∂f ⊙ mask;  ∂b_E = Σ_rows ∂pre;
      tied:   ∂W = ∂preᵀ x + fᵀ g  (computed as ONE GEMM [∂pre; f]ᵀ [x; g], K = 2B);
      untied: ∂W_E = ∂preᵀ x,  ∂W_D = gᵀ f.
    Two implementations of the same arithmetic:
      oneDNN (`ONEDNN_LINEAR`; where torch has it, the SAE is large enough and
        torch.backends.mkldnn is enabled): codes and ∂f are computed transposed, fᵀ = ReLU(W xᵀ +
        b_E) and ∂fᵀ = W gᵀ ([h, B]: oneDNN runs these ~20 % faster than the [B, h] orientation,
        and they land directly in the [∂pre; f]ᵀ operand of the weight-gradient GEMM, so that
        needs no transpose); `− x` is fused into the decoder GEMM; weight gradients come back
        as fresh tensors assigned to `.grad`.
      torch.mm (MKL): everything in [B, ·] orientation, written into the `.grad` buffers;
        transposed left operands are first copied into contiguous buffers (~20 % faster so).
    """

    def __init__(self, sae: SparseAutoencoder, l1: float) -> None:
        self.sae = sae
        self.l1 = float(l1)
        big = sae.d_in * sae.d_hidden > ONEDNN_MIN_WEIGHTS
        self.linear = ONEDNN_LINEAR if big and torch.backends.mkldnn.enabled else None
        self.buffers: dict[int, dict[str, torch.Tensor]] = {}
        for p in sae.parameters():
            p.grad = torch.zeros_like(p)

    def _buf(self, b: int) -> dict[str, torch.Tensor]:
        if b not in self.buffers:
            h, n = self.sae.d_hidden, self.sae.d_in
            self.buffers[b] = {
                "pre": torch.empty(b, h), "left": torch.empty(2 * b, h), "right": torch.empty(2 * b, n),
                "left_t": torch.empty(h, 2 * b), "g_t": torch.empty(n, b),
                "df": torch.empty(b, h), "f": torch.empty(b, h), "dpre_t": torch.empty(h, b),
                "bias_t": torch.empty(h, b),
            }
        return self.buffers[b]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Write the gradients of the loss on batch `x` into `.grad`; return the loss (0-d)."""
        return self._onednn(x) if self.linear is not None else self._mm(x)

    def _onednn(self, x: torch.Tensor) -> torch.Tensor:
        sae, l1, linear = self.sae, self.l1, self.linear
        b, h = x.shape[0], sae.d_hidden
        buf = self._buf(b)
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

    def _mm(self, x: torch.Tensor) -> torch.Tensor:
        sae, l1 = self.sae, self.l1
        b = x.shape[0]
        buf = self._buf(b)
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
