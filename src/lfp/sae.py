"""The paper's sparse autoencoder (§2, §3.2, App. F), its fast CPU training loop, I/O and metrics.

Model: codes f = ReLU(W_E x + b_E), reconstruction x̂ = W_Dᵀ f + b_D, with W_D = W_E when tied
(the paper's choice) or a separate decoder when `tied=False` (its Table 11 comparison). Loss (the
paper's code): mean-squared error over all elements + l1 · mean over rows of ‖f‖₁. As in the
paper's code, the encoder rows (= the tied dictionary's feature directions) are renormalised to
unit ℓ2 norm before every step, so the ℓ1 penalty cannot be dodged by shrinking codes.

Why a hand-written loop: at batch 32 every GEMM is tiny and autograd + torch.optim spend as much
time in dispatch as in arithmetic. `train_sae` runs the same algorithm (Adam, batch 32, same loss,
same normalisation) with hand-derived gradients written straight into `.grad`, the weight gradient
as one GEMM, the GEMMs of large SAEs through oneDNN (2x MKL's speed on AMD CPUs), and torch's
fused Adam kernel called directly; `train_saes` trains several SAEs at
once, one single-threaded job per core (threads inside a batch-32 GEMM barely pay off). It agrees
with `train_sae_reference`, the plain autograd version, to float rounding (tests/test_sae.py);
speed: benchmarks/sae_train.py.

Public API: SparseAutoencoder (.encode/.decode/forward/.d_in/.d_hidden/.dictionary()),
train_sae, train_saes, save_sae, load_sae, sae_file, matching_file, reconstruction_metrics,
dictionary_matching.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lfp import io, paths
from lfp.errors import ArtifactError

WEIGHTS_SUFFIX = ".safetensors"
EVAL_CHUNK_ROWS = 8192  # rows per chunk when scoring: bounds memory for any number of rows


class SparseAutoencoder(nn.Module):
    """x̂ = W_Dᵀ ReLU(W_E x + b_E) + b_D; `encoder_weight` rows are the dictionary features."""

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


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


def usable_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Use `n` intra-op threads inside the block, restoring the previous setting afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def select_rows(n_rows: int, max_rows: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset of at most `max_rows` rows (sorted: memmap-friendly)."""
    if max_rows is None or n_rows <= max_rows:
        return np.arange(n_rows)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_rows, size=max_rows, replace=False))


def init_generator(seed: int, d_in: int, d_hidden: int) -> torch.Generator:
    """The torch RNG for one SAE's init and batch order, seeded from (seed, d_in, d_hidden): the
    n and 2n dictionaries must not share their initial directions, or matching them would find
    similar features by construction."""
    state = np.random.SeedSequence([seed, d_in, d_hidden]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def as_float_tensor(acts: np.ndarray | torch.Tensor, rows: np.ndarray | None = None) -> torch.Tensor:
    """Rows of an array/memmap/tensor as one contiguous float32 CPU tensor (a copy for memmaps)."""
    if isinstance(acts, torch.Tensor):
        t = acts.detach().to("cpu", torch.float32)
        return (t if rows is None else t[torch.from_numpy(rows)]).contiguous()
    arr = acts if rows is None else acts[rows]
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _onednn_linear() -> Any:
    """torch's oneDNN linear op (y = x Wᵀ + b, optionally fused with a ReLU or `± other`), or None
    on builds without it or off x86-64 (where it was not measured). Why not torch.mm: where MKL
    runs its AVX2 kernels (AMD CPUs) oneDNN's AVX-512 JIT runs these batch-32 GEMMs ~2x faster,
    but its ~15 µs overhead per call outweighs that on small SAEs, hence `_ONEDNN_MIN_WEIGHTS`."""
    try:
        if torch.backends.mkldnn.is_available() and platform.machine().lower() in ("x86_64", "amd64"):
            return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without the op
        pass
    return None  # pragma: no cover


_ONEDNN_LINEAR = _onednn_linear()
# oneDNN only for d_in·d_hidden above this: the measured break-even on a 2-core AMD EPYC (equal
# at 128x256 and 512x64; oneDNN 1.27x slower at 128x128, 0.82x at 128x512, 0.56x at 512x1024)
_ONEDNN_MIN_WEIGHTS = 1 << 15


def _normalize_rows_with_(weight: torch.Tensor, norms: torch.Tensor) -> None:
    """`normalize_rows_` for the training loop: the row norms go into the [rows, 1] buffer `norms`
    and the rows are multiplied by their reciprocals (the same result to within one rounding; a
    division costs twice the multiplication here, ~2 % of a step)."""
    torch.linalg.vector_norm(weight, dim=1, keepdim=True, out=norms)
    weight.mul_(norms.clamp_min_(1e-12).reciprocal_())


class _Step:
    """One training step with hand-derived gradients (no autograd), buffers reused across steps.

    With r = x̂ − x, g = 2r/(B·n), mask = [W_E x + b_E > 0]:
      ∂b_D = Σ_rows g;  ∂f = g W_D + l1/B;  ∂pre = ∂f ⊙ mask;  ∂b_E = Σ_rows ∂pre;
      tied:   ∂W = ∂preᵀ x + fᵀ g  (computed as ONE GEMM [∂pre; f]ᵀ [x; g], K = 2B);
      untied: ∂W_E = ∂preᵀ x,  ∂W_D = gᵀ f.
    Two implementations of the same arithmetic:
      oneDNN (`_ONEDNN_LINEAR`; where torch has it, the SAE is large enough and
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
        big = sae.d_in * sae.d_hidden > _ONEDNN_MIN_WEIGHTS
        self.linear = _ONEDNN_LINEAR if big and torch.backends.mkldnn.enabled else None
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


class FusedAdam:
    """Adam with torch's defaults (betas 0.9/0.999, eps 1e-8, no weight decay) through the kernel
    `torch.optim.Adam(fused=True)` calls, minus its per-step Python bookkeeping (as costly as the
    kernel itself at batch 32) and its torch._dynamo import. Reads each parameter's `.grad`; falls
    back to torch.optim.Adam on builds without the kernel."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params, self.lr, self.betas, self.eps = params, float(lr), betas, eps
        self.exp_avgs = [torch.zeros_like(p) for p in params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in params]
        self.step_count = torch.zeros((), dtype=torch.float32)  # shared: the kernel only reads it
        self.fallback = None if hasattr(torch, "_fused_adam_") else torch.optim.Adam(params, lr=lr, betas=betas, eps=eps)

    @torch.no_grad()
    def step(self) -> None:
        if self.fallback is not None:  # pragma: no cover - torch builds without the fused kernel
            self.fallback.step()
            return
        self.step_count += 1
        torch._fused_adam_(
            self.params, [p.grad for p in self.params], self.exp_avgs, self.exp_avg_sqs, [],
            [self.step_count] * len(self.params),
            lr=self.lr, beta1=self.betas[0], beta2=self.betas[1], weight_decay=0.0, eps=self.eps,
            amsgrad=False, maximize=False,
        )


def train_sae(
    acts: np.ndarray | torch.Tensor,
    d_hidden: int,
    *,
    l1: float,
    lr: float,
    batch_size: int,
    epochs: int,
    seed: int,
    tied: bool = True,
    max_rows: int | None = None,
    threads: int | None = None,
) -> tuple[SparseAutoencoder, dict[str, Any]]:
    """Train one SAE on the rows of `acts` [n_rows, d_in] (array, memmap or tensor).

    At most `max_rows` rows (a seeded subset) are used; each epoch visits them in a fresh seeded
    order in contiguous batches of `batch_size` (the last one may be smaller). Runs on `threads`
    torch threads (default 1: batch-32 GEMMs gain ≤ 1.5x from a second core on an idle machine and
    collapse ~10x on a busy one; to use several cores train several SAEs with `train_saes`).
    Returns the trained module (on CPU, eval mode) and stats: rows, steps, seconds, cpu_seconds (of
    the calling thread: robust to a shared CPU when threads=1), rows_per_s, first/final loss, mean
    loss per epoch.
    """
    if acts.ndim != 2 or acts.shape[0] == 0:
        raise ArtifactError(f"train_sae: activations must be a non-empty [rows, d_in] array, got shape {tuple(acts.shape)}")
    with torch_threads(threads or 1):
        return _train(acts, d_hidden, l1=l1, lr=lr, batch_size=batch_size, epochs=epochs, seed=seed, tied=tied, max_rows=max_rows)


def train_saes(
    jobs: Sequence[tuple[Callable[[], np.ndarray | torch.Tensor], int]],
    *,
    l1: float,
    lr: float,
    batch_size: int,
    epochs: int,
    seed: int,
    tied: bool = True,
    max_rows: int | None = None,
    workers: int | None = None,
) -> list[tuple[SparseAutoencoder, dict[str, Any]]]:
    """Train independent SAEs — `jobs` = [(load activations, d_hidden)] — one per core at a time.

    Why: batch-32 GEMMs scale poorly over threads (and collapse on a busy machine), while
    independent single-threaded trainings scale with cores. Each result is identical to
    `train_sae(load(), d_hidden, ..., threads=1)`; loaders run inside the workers, so at most
    `workers` activation sets are in memory at once. Largest dictionaries start first.
    """
    workers = max(1, min(workers or usable_cores(), len(jobs) or 1))

    def one(job: tuple[Callable[[], np.ndarray | torch.Tensor], int]) -> tuple[SparseAutoencoder, dict[str, Any]]:
        torch.set_num_threads(1)  # per OS thread: MKL/OpenMP thread counts are thread-local
        acts = job[0]()
        if acts.ndim != 2 or acts.shape[0] == 0:
            raise ArtifactError(f"train_saes: activations must be a non-empty [rows, d_in] array, got shape {tuple(acts.shape)}")
        return _train(acts, job[1], l1=l1, lr=lr, batch_size=batch_size, epochs=epochs, seed=seed, tied=tied, max_rows=max_rows)

    order = sorted(range(len(jobs)), key=lambda i: -jobs[i][1])
    # a pool even for one worker: in the main thread glibc hands the 2 MB of each step's fresh
    # weight gradient back to the OS and refaults it (~3 % of a step at d_hidden 1024)
    with torch_threads(1), ThreadPoolExecutor(workers, thread_name_prefix="sae") as pool:
        done = list(pool.map(lambda i: one(jobs[i]), order))
    results: list[Any] = [None] * len(jobs)
    for i, res in zip(order, done):
        results[i] = res
    return results


def _train(
    acts: np.ndarray | torch.Tensor, d_hidden: int, *, l1: float, lr: float, batch_size: int, epochs: int,
    seed: int, tied: bool, max_rows: int | None,
) -> tuple[SparseAutoencoder, dict[str, Any]]:
    """The training loop of `train_sae` under the caller's thread setting."""
    data = as_float_tensor(acts, select_rows(int(acts.shape[0]), max_rows, seed))
    n_rows, d_in = data.shape
    gen = init_generator(seed, d_in, d_hidden)
    sae = SparseAutoencoder(d_in, d_hidden, tied=tied)
    sae.reset_parameters(gen)
    step = _Step(sae, l1)
    opt = FusedAdam(list(sae.parameters()), lr)
    weight, norms = sae.encoder_weight.detach(), torch.empty(d_hidden, 1)
    losses = torch.zeros(epochs)
    first_loss = final_loss = float("nan")
    start, cpu_start = time.perf_counter(), time.thread_time()
    n_steps = 0
    with torch.no_grad():
        for epoch in range(epochs):
            data = data[torch.randperm(n_rows, generator=gen)]
            total = torch.zeros(())
            for lo in range(0, n_rows, batch_size):
                loss = step(data[lo : lo + batch_size])
                opt.step()
                _normalize_rows_with_(weight, norms)
                total += loss
                n_steps += 1
                if n_steps == 1:
                    first_loss = float(loss)
            losses[epoch] = total / math.ceil(n_rows / batch_size)
            final_loss = float(loss)
    seconds, cpu_seconds = time.perf_counter() - start, time.thread_time() - cpu_start
    for p in sae.parameters():
        p.grad = None
    sae.eval()
    stats = {
        "rows": int(n_rows), "steps": n_steps, "seconds": seconds, "cpu_seconds": cpu_seconds,
        "rows_per_s": n_rows * epochs / seconds if seconds > 0 else float("inf"),
        "first_loss": first_loss, "final_loss": final_loss, "epoch_loss": losses.tolist(),
    }
    return sae, stats


def train_sae_reference(
    acts: np.ndarray | torch.Tensor, d_hidden: int, *, l1: float, lr: float, batch_size: int, epochs: int,
    seed: int, tied: bool = True, max_rows: int | None = None, threads: int | None = None,
) -> SparseAutoencoder:
    """The same algorithm written the plain way (autograd + torch.optim.Adam, batch by batch).

    Kept as the executable specification `train_sae` is tested against, and as the benchmark's
    baseline (same thread policy). Same seed ⇒ same init, same batches, so results agree to float
    rounding.
    """
    data = as_float_tensor(acts, select_rows(int(acts.shape[0]), max_rows, seed))
    gen = init_generator(seed, data.shape[1], d_hidden)
    sae = SparseAutoencoder(data.shape[1], d_hidden, tied=tied)
    sae.reset_parameters(gen)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    with torch_threads(threads or 1):
        for _ in range(epochs):
            data = data[torch.randperm(data.shape[0], generator=gen)]
            for lo in range(0, data.shape[0], batch_size):
                opt.zero_grad()
                sae.loss(data[lo : lo + batch_size], l1).backward()
                opt.step()
                normalize_rows_(sae.encoder_weight)
    return sae.eval()


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def sae_file(model: str, task: str, layer: int, ratio: int) -> Path:
    """`models/sae/{m}-{t}/layer{L}-x{r}.safetensors` (its JSON config sits beside it)."""
    return paths.sae_dir(model, task) / f"layer{layer}-x{ratio}{WEIGHTS_SUFFIX}"


def matching_file(model: str, task: str) -> Path:
    return paths.sae_dir(model, task) / "matching.json"


def config_path(path: str | os.PathLike[str]) -> Path:
    return Path(path).with_suffix(".json")


def save_sae(sae: SparseAutoencoder, path: str | os.PathLike[str], config: dict[str, Any]) -> None:
    """Write weights (safetensors) and `{path stem}.json` = config + d_in/d_hidden/tied, atomically."""
    tensors = {k: v.detach().cpu() for k, v in sae.state_dict().items()}
    io.save_tensors(path, tensors)
    io.write_json(config_path(path), {**config, "d_in": sae.d_in, "d_hidden": sae.d_hidden, "tied": sae.tied})


def load_sae(path: str | os.PathLike[str]) -> SparseAutoencoder:
    """Load an SAE written by `save_sae` (the .safetensors path; the .json config beside it).

    Returns a CPU module in eval mode with bit-identical weights; a missing, truncated or
    mismatching file raises ArtifactError naming it.
    """
    p = Path(path)
    cfg = io.read_json(config_path(p))
    try:
        d_in, d_hidden, tied = int(cfg["d_in"]), int(cfg["d_hidden"]), bool(cfg["tied"])
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(f"{config_path(p)}: config needs integer 'd_in', 'd_hidden' and boolean 'tied'") from None
    sae = SparseAutoencoder(d_in, d_hidden, tied=tied)
    tensors = io.load_tensors(p)
    expected = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if found != expected:
        raise ArtifactError(f"{p}: tensors {found} do not match the config's shapes {expected}")
    sae.load_state_dict(tensors)
    return sae.eval()


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def reconstruction_metrics(sae: SparseAutoencoder, acts: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Held-out quality: mse (mean over elements, the paper's reconstruction loss), fvu
    (Σ‖x−x̂‖² / Σ‖x−x̄‖²), l0 (mean active codes per row) and dead_fraction (features never active)."""
    n = int(acts.shape[0])
    if n == 0:
        raise ArtifactError("reconstruction_metrics: no held-out rows")
    sq_err = 0.0
    active = 0.0
    fired = torch.zeros(sae.d_hidden, dtype=torch.bool)
    s1 = torch.zeros(sae.d_in, dtype=torch.float64)
    s2 = torch.zeros((), dtype=torch.float64)
    for lo in range(0, n, EVAL_CHUNK_ROWS):
        x = as_float_tensor(acts[lo : lo + EVAL_CHUNK_ROWS])
        x_hat, codes = sae(x)
        sq_err += float((x_hat - x).double().pow(2).sum())
        on = codes > 0
        active += float(on.sum())
        fired |= on.any(dim=0)
        s1 += x.double().sum(0)
        s2 += x.double().pow(2).sum()
    total_var = float(s2 - s1.pow(2).sum() / n)
    return {
        "mse": sq_err / (n * sae.d_in),
        "fvu": sq_err / total_var if total_var > 0 else float("nan"),
        "l0": active / n,
        "dead_fraction": 1.0 - float(fired.float().mean()),
    }


def dictionary_matching(small: torch.Tensor, large: torch.Tensor) -> dict[str, Any]:
    """Match a small dictionary [h1, d] to a large one [h2, d] by cosine of feature directions.

    Returns per small feature its max cosine to any large feature (`max_cos`), small-feature
    indices ranked by it (`ranked_features`, best first, ties by index), their mean (`mmcs`), and
    the one-to-one Hungarian matching maximising total cosine (`hungarian` [[i, j], ...] sorted by
    i, `hungarian_mean_cos`).
    """
    from scipy.optimize import linear_sum_assignment

    a = F.normalize(small.detach().double(), dim=1)
    b = F.normalize(large.detach().double(), dim=1)
    cos = (a @ b.t()).numpy()
    max_cos = cos.max(axis=1)
    ranked = np.lexsort((np.arange(len(max_cos)), -max_cos))
    rows, cols = linear_sum_assignment(cos, maximize=True)
    return {
        "max_cos": [float(v) for v in max_cos],
        "ranked_features": [int(i) for i in ranked],
        "mmcs": float(max_cos.mean()),
        "hungarian": [[int(i), int(j)] for i, j in zip(rows, cols)],
        "hungarian_mean_cos": float(cos[rows, cols].mean()),
    }
