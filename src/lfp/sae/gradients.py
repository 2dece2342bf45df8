"""The SAEs' training step with hand-derived gradients on a given GEMM path: relu_l1 on MKL or
oneDNN, topk on either.

Why: at batch 32 every GEMM is tiny and autograd spends as much time in dispatch as in
arithmetic. `HandGradients` computes the same loss and gradients as `SparseAutoencoder.loss`
+ backward (tests/test_sae.py and tests/test_sae_topk.py check it against the autograd
reference) with preallocated buffers and the tied weight gradient as one GEMM. Which path is
fastest here is not decided here: lfp.sae.step.GradientStep asks lfp.sae.backend, which times
this class on both paths (oneDNN ran 2x MKL's speed on an AMD EPYC, 0.9x on an Intel CPU).
"""

from __future__ import annotations

import torch

import lfp.sae.gemm as gemm
from lfp.sae.model import DeadLatents, SparseAutoencoder, aux_size


def normalize_rows_with_(weight: torch.Tensor, norms: torch.Tensor) -> None:
    """`normalize_rows_` for the training loop: the row norms go into the [rows, 1] buffer `norms`
    and the rows are multiplied by their reciprocals (the same result to within one rounding; a
    division costs twice the multiplication here, ~2 % of a step)."""
    torch.linalg.vector_norm(weight, dim=1, keepdim=True, out=norms)
    weight.mul_(norms.clamp_min_(1e-12).reciprocal_())


def normalize_columns_with_(weight: torch.Tensor, norms: torch.Tensor, squares: torch.Tensor) -> None:
    """`normalize_columns_` for the training loop, the norms in the [1, columns] buffer `norms`:
    √(Σ_rows w²) through the [rows, columns] buffer `squares`, since torch's vector_norm over
    dim 0 of a row-major matrix runs ~13x slower (1 ms of a 4 ms step at 512x1024)."""
    torch.mul(weight, weight, out=squares)
    torch.sum(squares, 0, keepdim=True, out=norms)
    weight.mul_(norms.sqrt_().clamp_min_(1e-12).reciprocal_())


class HandGradients:
    """One training step with hand-derived gradients (no autograd), buffers reused across steps.

    relu_l1 (below; topk: `_topk`). With r = x̂ − x, g = 2r/(B·n), mask = [W_E x + b_E > 0]:
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

    def __init__(self, sae: SparseAutoencoder, l1: float = 0.0, *, backend: str, aux_k: int = 0,
                 aux_coeff: float = 0.0, dead_window: int = 0) -> None:
        """`backend`: "mkl" or "onednn" (one of `gemm.backends_for(sae)`); topk only: the auxiliary
        loss's `aux_k` (0: d_in // 2) and `aux_coeff` (0: none) over the latents dead for
        `dead_window` rows."""
        self.sae = sae
        self.l1 = float(l1)
        if backend not in gemm.backends_for(sae):
            raise ValueError(f"GradientStep: backend {backend!r} is not available for a {sae.architecture} SAE here "
                             f"(available: {', '.join(gemm.backends_for(sae))})")
        self.backend = backend
        self.linear = gemm.ONEDNN_LINEAR if backend == "onednn" else None
        self.aux_k, self.aux_coeff = int(aux_k), float(aux_coeff)
        self.dead = DeadLatents(sae.d_hidden, dead_window) if sae.is_topk and self.aux_coeff > 0 else None
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
        if self.sae.is_topk:
            return self._topk(x)
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

    def _nt(self, a: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """a wᵀ: into `out` with torch.mm (MKL), or a fresh tensor from oneDNN."""
        if self.linear is None:
            return torch.mm(a, w.t(), out=out)
        return self.linear(a, w, None, "none", [], "")

    def _topk(self, x: torch.Tensor) -> torch.Tensor:
        """topk, on either backend (`_nt`). With S = the k selected entries of each row with
        pre > 0 (f = ReLU(pre) on S, 0 elsewhere), r = x̂ − x, g = 2r/(B·n):
          ∂b_D = Σ_rows g;  ∂f = g W_Dᵀ;  ∂pre = ∂f ⊙ [f > 0];  ∂b_E = Σ_rows ∂pre;
          untied: ∂W_E = ∂preᵀ x,  ∂W_D = gᵀ f  ([n, h], nn.Linear layout);
          tied:   ∂W = ∂preᵀ x + fᵀ g  (ONE GEMM [∂pre; f]ᵀ [x; g]).
        Auxiliary loss over the dead latents D (when any): a = ReLU(pre) on the top k_aux of D,
        ê = a W_D, e = −r (a constant), loss += c·(ê − e)²/(B·n) with c = aux_coeff·scale, and
        g_a = 2c(ê − e)/(B·n) adds ∂pre += (g_a W_Dᵀ) ⊙ [a > 0], and g_aᵀ a to ∂W_D (untied: the
        GEMM becomes [g; g_a]ᵀ [f; a]) or aᵀ g_a to ∂W (tied: [∂pre; f; a]ᵀ [x; g; g_a])."""
        sae, nt = self.sae, self._nt
        b, n, k = x.shape[0], sae.d_in, sae.k
        buf = self._topk_buf(b)
        W = sae.encoder_weight.data
        WD = sae.decoder_rows().data  # [h, n]
        WD_lin = WD.t()  # [n, h]: x̂ = f WD_linᵀ + b_D
        f, df, dpre = buf["f"], buf["df"], buf["dpre"]
        vals, idx = buf["vals"], buf["idx"]
        if self.linear is None:
            pre = torch.addmm(sae.encoder_bias.data, x, W.t(), out=buf["pre"])
        else:
            pre = self.linear(x, W, sae.encoder_bias.data, "none", [], "")
        torch.topk(pre, k, dim=1, sorted=False, out=(vals, idx))
        f.zero_().scatter_(1, idx, vals.clamp_min_(0.0))
        if self.linear is None:
            g = torch.addmm(sae.decoder_bias.data, f, WD, out=buf["g"])
            g.sub_(x)  # r
        else:
            g = self.linear.binary(f, x, WD_lin, sae.decoder_bias.data, "sub")  # r = x̂ − x
        flat = g.view(-1)
        loss = torch.dot(flat, flat) / flat.numel()
        dead = self.dead.mask() if self.dead is not None else None
        n_dead = int(dead.sum()) if dead is not None else 0
        a = ga = None
        if n_dead:
            k_aux, scale = aux_size(n, self.aux_k, n_dead)
            c = self.aux_coeff * scale
            masked = torch.where(dead, pre, buf["neg_inf"], out=buf["masked"])
            a_vals, a_idx = masked.topk(k_aux, dim=1, sorted=False)
            a = buf["a"]
            a.zero_().scatter_(1, a_idx, a_vals.clamp_min_(0.0))
            ga = nt(a, WD_lin, buf["ga"])  # ê
            ga.add_(g)  # ê − e = ê + r
            aflat = ga.view(-1)
            loss = loss + c * torch.dot(aflat, aflat) / aflat.numel()
            ga.mul_(2.0 * c / ga.numel())
        g.mul_(2.0 / g.numel())
        torch.sum(g, 0, out=sae.decoder_bias.grad)
        df = nt(g, WD, df)  # ∂f = g W_Dᵀ (W_D as [h, n] rows)
        threshold_backward = torch.ops.aten.threshold_backward.grad_input
        threshold_backward(df, f, 0.0, grad_input=dpre)  # ∂f ⊙ [f > 0]
        if n_dead:
            da = nt(ga, WD, buf["da"])
            threshold_backward(da, a, 0.0, grad_input=da)
            dpre.add_(da)
        torch.sum(dpre, 0, out=sae.encoder_bias.grad)
        m = 2 * b if n_dead else b
        if sae.decoder_weight is None:  # ∂W = [∂pre; f; a]ᵀ [x; g; g_a]
            left_t, right = buf["left_t"][:, : b + m], buf["right"][: b + m]
            left_t[:, :b].copy_(dpre.t())
            left_t[:, b : 2 * b].copy_(f.t())
            right[:b].copy_(x)
            right[b : 2 * b].copy_(g)
            if n_dead:
                left_t[:, 2 * b :].copy_(a.t())
                right[2 * b :].copy_(ga)
            sae.encoder_weight.grad = nt(left_t, right.t(), sae.encoder_weight.grad)
        else:  # ∂W_E = ∂preᵀ x;  ∂W_D = [g; g_a]ᵀ [f; a]
            dpre_t = buf["left_t"][:, :b]
            dpre_t.copy_(dpre.t())
            sae.encoder_weight.grad = nt(dpre_t, x.t(), sae.encoder_weight.grad)
            g_t, fa = buf["g_t"][:, :m], buf["fa"][:m]
            g_t[:, :b].copy_(g.t())
            fa[:b].copy_(f)
            if n_dead:
                g_t[:, b:].copy_(ga.t())
                fa[b:].copy_(a)
            sae.decoder_weight.grad = nt(g_t, fa.t(), sae.decoder_weight.grad)
        if self.dead is not None:
            self.dead.update(f)
        return loss

    def _topk_buf(self, b: int) -> dict[str, torch.Tensor]:
        key = -b  # apart from the relu_l1 buffers of the same batch size
        if key not in self.buffers:
            h, n, k = self.sae.d_hidden, self.sae.d_in, self.sae.k
            self.buffers[key] = {
                "pre": torch.empty(b, h), "f": torch.empty(b, h), "g": torch.empty(b, n), "df": torch.empty(b, h),
                "dpre": torch.empty(b, h), "vals": torch.empty(b, k), "idx": torch.empty(b, k, dtype=torch.int64),
                "left_t": torch.empty(h, 3 * b), "right": torch.empty(3 * b, n), "g_t": torch.empty(n, 2 * b),
                "fa": torch.empty(2 * b, h), "masked": torch.empty(b, h), "neg_inf": torch.full((), -torch.inf),
                "a": torch.empty(b, h), "ga": torch.empty(b, n), "da": torch.empty(b, h),
            }
        return self.buffers[key]
