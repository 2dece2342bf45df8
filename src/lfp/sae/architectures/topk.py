"""topk (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"; SAELens's "topk"): codes
keep the k largest pre-activations of each row after a ReLU, f = TopK_k(ReLU(W_E x + b_E)), and
zero the rest, so L0 ≤ k by construction and no sparsity penalty is trained or reported. Loss: MSE
+ `aux_coeff` · the dead-latent auxiliary loss (`topk_aux_loss`).

Untied by default (as in the paper, SAELens and sparsify), with unit-norm decoder directions (the
columns of `decoder_weight`) renormalised after every step and learning at a width-scaled rate
(lfp.sae.train.decoder_lr_scale; removing the gradient along the directions, as Gao et al. do,
changed FVU by < 2 % here and cost up to 1/3 of the speed); the encoder starts as the decoder's
transpose, and training starts from b_D = the rows' mean, b_E = −W_E·mean (`center_init_`).
`tied=True` gives a TopK SAE on the shared, unit-norm-row matrix. SAELens's TopKSAE.encode is
TopK_k(ReLU) of x W_enc + b_enc (b_dec not subtracted, no rescale by the decoder norms): the same
tensors and semantics, with cfg fields `k` and `rescale_acts_by_decoder_norm` false.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lfp.core.errors import ArtifactError
from lfp.sae.architectures.base import DeadTracker, SaeWeights, StepState
from lfp.sae.norms import normalize_columns_, normalize_rows_

# Defaults. AUX_COEFF: Gao et al.'s α = 1/32 (also sparsify's; SAELens uses 1.0), relative to the
# MSE. DEAD_WINDOW_ROWS: a latent that fired on none of the last this-many training rows is dead
# for the auxiliary loss (Gao et al.: 10M tokens; SAELens: 1000 steps; here the paper's budget is
# 75k rows, so ~13 % of it).
DEFAULT_K = 32
AUX_COEFF = 1.0 / 32
DEAD_WINDOW_ROWS = 10_000


class TopK:
    """The TopK SAE (see the module docstring)."""

    name = "topk"
    saelens_architecture = "topk"
    saelens_fixed: dict[str, Any] = {"rescale_acts_by_decoder_norm": False}

    def settings(self, k: int | None, tied: bool | None) -> dict[str, Any]:
        """Untied unless told otherwise (Gao et al., SAELens, sparsify); k defaults to DEFAULT_K."""
        return {"architecture": self.name, "k": DEFAULT_K if k is None else int(k), "tied": bool(tied) if tied is not None else False}

    def check(self, k: int | None, d_hidden: int) -> None:
        if k is None or not 1 <= int(k) <= int(d_hidden):
            raise ValueError(f"SparseAutoencoder: topk needs 1 <= k <= d_hidden={d_hidden}, got k={k!r}")

    def unit_norm_decoder(self, tied: bool) -> bool:
        return not tied

    def reset_(self, sae: SaeWeights) -> None:
        """Unit-norm decoder directions and the encoder = the decoder's transpose (Gao et al. §2.4);
        tied: unit-norm rows of the shared matrix."""
        if sae.decoder_weight is not None:
            normalize_columns_(sae.decoder_weight)
            sae.encoder_weight.copy_(sae.decoder_weight.t())
        else:
            normalize_rows_(sae.encoder_weight)

    def init_from_data_(self, sae: SaeWeights, data: torch.Tensor) -> None:
        center_init_(sae, data)

    def activate(self, pre: torch.Tensor, k: int | None) -> torch.Tensor:
        assert k is not None
        return topk_relu(pre, k)

    def trained_l1(self, l1: float) -> float:
        return 0.0

    def recorded(self, l1: float, k: int | None) -> tuple[float | None, int | None]:
        return None, k

    def dead_latents(self, d_hidden: int, window: int, aux_coeff: float) -> DeadTracker | None:
        return DeadLatents(d_hidden, window) if aux_coeff > 0 else None

    def add_loss(self, sae: SaeWeights, mse: torch.Tensor, x: torch.Tensor, pre: torch.Tensor, codes: torch.Tensor,
                 x_hat: torch.Tensor, *, l1: float, dead: torch.Tensor | None, aux_k: int,
                 aux_coeff: float) -> torch.Tensor:
        """MSE + aux_coeff · `topk_aux_loss` over the `dead` latents."""
        if dead is not None and aux_coeff > 0:
            return mse + aux_coeff * topk_aux_loss(sae, x, x_hat, pre, dead, aux_k)
        return mse

    def hand_step(self, state: StepState, x: torch.Tensor) -> torch.Tensor:
        return _step(state, x)

    def cfg_fields(self, sae: SaeWeights) -> dict[str, Any]:
        return {"k": sae.k}

    def check_cfg(self, cfg: dict[str, Any], path: Path) -> None:
        k = cfg.get("k")
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= cfg["d_sae"]:
            raise ArtifactError(f"{path}: field 'k' must be an integer in 1..d_sae={cfg['d_sae']} for lfp_architecture 'topk', "
                                f"got {cfg.get('k', '<missing>')!r}")


TOPK = TopK()


def topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    """ReLU of the k largest entries of each row of `pre` (last dim), zeros elsewhere."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, indices, values.relu())


@torch.no_grad()
def center_init_(sae: SaeWeights, data: torch.Tensor) -> None:
    """b_D = the training rows' mean and b_E = −W_E·mean: the encoder starts on centred inputs,
    as Gao et al.'s b_pre (init at the geometric median) does, without subtracting b_D from
    every input (apply_b_dec_to_input stays false)."""
    mean = data.double().mean(0).float()
    sae.decoder_bias.copy_(mean)
    sae.encoder_bias.copy_(-(sae.encoder_weight @ mean))


def aux_size(d_in: int, aux_k: int, n_dead: int) -> tuple[int, float]:
    """(k_aux, scale) of the auxiliary loss: k_aux = `aux_k` (0: d_in // 2, SAELens's and
    sparsify's heuristic) capped at the number of dead latents; scale = min(n_dead / k_aux, 1)
    so that a handful of dead latents do not get the full weight."""
    nominal = int(aux_k) if aux_k > 0 else max(1, d_in // 2)
    return min(nominal, n_dead), min(n_dead / nominal, 1.0)


def topk_aux_loss(sae: SaeWeights, x: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor, dead: torch.Tensor,
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


def _nt(state: StepState, a: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """a wᵀ: into `out` with torch.mm (MKL), or a fresh tensor from oneDNN."""
    if state.linear is None:
        return torch.mm(a, w.t(), out=out)
    return state.linear(a, w, None, "none", [], "")


def _step(state: StepState, x: torch.Tensor) -> torch.Tensor:
    """The hand-derived step, on either backend (`_nt`). With S = the k selected entries of each
    row with pre > 0 (f = ReLU(pre) on S, 0 elsewhere), r = x̂ − x, g = 2r/(B·n):
      ∂b_D = Σ_rows g;  ∂f = g W_Dᵀ;  ∂pre = ∂f ⊙ [f > 0];  ∂b_E = Σ_rows ∂pre;
      untied: ∂W_E = ∂preᵀ x,  ∂W_D = gᵀ f  ([n, h], nn.Linear layout);
      tied:   ∂W = ∂preᵀ x + fᵀ g  (ONE GEMM [∂pre; f]ᵀ [x; g]).
    Auxiliary loss over the dead latents D (when any): a = ReLU(pre) on the top k_aux of D,
    ê = a W_D, e = −r (a constant), loss += c·(ê − e)²/(B·n) with c = aux_coeff·scale, and
    g_a = 2c(ê − e)/(B·n) adds ∂pre += (g_a W_Dᵀ) ⊙ [a > 0], and g_aᵀ a to ∂W_D (untied: the
    GEMM becomes [g; g_a]ᵀ [f; a]) or aᵀ g_a to ∂W (tied: [∂pre; f; a]ᵀ [x; g; g_a])."""
    sae = state.sae
    b, n, k = x.shape[0], sae.d_in, sae.k
    assert k is not None
    buf = _buf(state, b)
    W = sae.encoder_weight.data
    WD = sae.decoder_rows().data  # [h, n]
    WD_lin = WD.t()  # [n, h]: x̂ = f WD_linᵀ + b_D
    f, df, dpre = buf["f"], buf["df"], buf["dpre"]
    vals, idx = buf["vals"], buf["idx"]
    if state.linear is None:
        pre = torch.addmm(sae.encoder_bias.data, x, W.t(), out=buf["pre"])
    else:
        pre = state.linear(x, W, sae.encoder_bias.data, "none", [], "")
    torch.topk(pre, k, dim=1, sorted=False, out=(vals, idx))
    f.zero_().scatter_(1, idx, vals.clamp_min_(0.0))
    if state.linear is None:
        g = torch.addmm(sae.decoder_bias.data, f, WD, out=buf["g"])
        g.sub_(x)  # r
    else:
        g = state.linear.binary(f, x, WD_lin, sae.decoder_bias.data, "sub")  # r = x̂ − x
    flat = g.view(-1)
    loss = torch.dot(flat, flat) / flat.numel()
    dead = state.dead.mask() if state.dead is not None else None
    n_dead = int(dead.sum()) if dead is not None else 0
    a = ga = None
    if n_dead:
        assert dead is not None
        k_aux, scale = aux_size(n, state.aux_k, n_dead)
        c = state.aux_coeff * scale
        masked = torch.where(dead, pre, buf["neg_inf"], out=buf["masked"])
        a_vals, a_idx = masked.topk(k_aux, dim=1, sorted=False)
        a = buf["a"]
        a.zero_().scatter_(1, a_idx, a_vals.clamp_min_(0.0))
        ga = _nt(state, a, WD_lin, buf["ga"])  # ê
        ga.add_(g)  # ê − e = ê + r
        aflat = ga.view(-1)
        loss = loss + c * torch.dot(aflat, aflat) / aflat.numel()
        ga.mul_(2.0 * c / ga.numel())
    g.mul_(2.0 / g.numel())
    torch.sum(g, 0, out=sae.decoder_bias.grad)
    df = _nt(state, g, WD, df)  # ∂f = g W_Dᵀ (W_D as [h, n] rows)
    threshold_backward = torch.ops.aten.threshold_backward.grad_input
    threshold_backward(df, f, 0.0, grad_input=dpre)  # ∂f ⊙ [f > 0]
    if n_dead:
        da = _nt(state, ga, WD, buf["da"])
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
        sae.encoder_weight.grad = _nt(state, left_t, right.t(), sae.encoder_weight.grad)
    else:  # ∂W_E = ∂preᵀ x;  ∂W_D = [g; g_a]ᵀ [f; a]
        dpre_t = buf["left_t"][:, :b]
        dpre_t.copy_(dpre.t())
        sae.encoder_weight.grad = _nt(state, dpre_t, x.t(), sae.encoder_weight.grad)
        g_t, fa = buf["g_t"][:, :m], buf["fa"][:m]
        g_t[:, :b].copy_(g.t())
        fa[:b].copy_(f)
        if n_dead:
            g_t[:, b:].copy_(ga.t())
            fa[b:].copy_(a)
        sae.decoder_weight.grad = _nt(state, g_t, fa.t(), sae.decoder_weight.grad)
    if state.dead is not None:
        state.dead.update(f)
    return loss


def _buf(state: StepState, b: int) -> dict[str, torch.Tensor]:
    key = -b  # apart from the relu_l1 buffers of the same batch size
    if key not in state.buffers:
        h, n, k = state.sae.d_hidden, state.sae.d_in, state.sae.k
        assert k is not None
        state.buffers[key] = {
            "pre": torch.empty(b, h), "f": torch.empty(b, h), "g": torch.empty(b, n), "df": torch.empty(b, h),
            "dpre": torch.empty(b, h), "vals": torch.empty(b, k), "idx": torch.empty(b, k, dtype=torch.int64),
            "left_t": torch.empty(h, 3 * b), "right": torch.empty(3 * b, n), "g_t": torch.empty(n, 2 * b),
            "fa": torch.empty(2 * b, h), "masked": torch.empty(b, h), "neg_inf": torch.full((), -torch.inf),
            "a": torch.empty(b, h), "ga": torch.empty(b, n), "da": torch.empty(b, h),
        }
    return state.buffers[key]
