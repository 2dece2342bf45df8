"""Training SAEs on cached activations: the fast loop, the parallel pool, the reference.

`train_sae` runs the paper's algorithm (Adam, batch 32, MSE + l1·‖f‖₁, unit-norm encoder rows
before every step; `architecture="relu_l1"`, the paper method) or a TopK SAE (`"topk"`: the k
largest codes per row, MSE + the dead-latent auxiliary loss, unit-norm decoder directions; see
lfp.sae.architectures) with `GradientStep` and `FusedAdam` instead of autograd + torch.optim;
`train_saes` trains several SAEs at once, one single-threaded job per core (threads inside a
batch-32 GEMM barely pay off); `train_sae_reference` is the plain autograd version, kept as the
executable specification the fast loop agrees with to float rounding (tests/test_sae.py).
Speed: benchmarks/sae_train.py.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lfp.core.errors import ArtifactError
from lfp.sae.architectures import PAPER_METHOD, architecture_named
from lfp.sae.architectures.topk import AUX_COEFF, DEAD_WINDOW_ROWS
from lfp.sae.backend import choose_backend
from lfp.sae.model import SparseAutoencoder
from lfp.sae.norms import normalize_columns_with_, normalize_rows_with_
from lfp.sae.optim import FusedAdam
from lfp.sae.rows import as_float_tensor, select_rows
from lfp.sae.step import GradientStep

Loader = Callable[[], np.ndarray | torch.Tensor]  # loads one SAE's training activations


# An untied topk decoder learns at lr · √(DECODER_LR_WIDTH / d_in): Adam moves every element by ~lr, so a
# unit-norm direction of d_in elements turns by ~lr·√d_in per step; this keeps that turn the same
# at every width. Measured (benchmarks/sae_peers.py, 4 seeds): on the tiny model's 64-wide
# activations the plain lr left FVU ~25 % above SAELens's TopK (whose 0.1-norm decoder init with
# decoder-norm rescaling speeds its decoder up similarly), lr·3 put it ~5-15 % below; on
# 512-wide rows any speed-up hurt (lr·3: +6 % FVU).
DECODER_LR_WIDTH = 512


class _Adams:
    """Adam over the SAE's parameters, a unit-norm decoder (untied topk) at its own learning rate."""

    def __init__(self, sae: SparseAutoencoder, lr: float, make: Callable[[list[torch.nn.Parameter], float], Any]) -> None:
        own = [sae.decoder_weight] if sae.unit_norm_decoder and sae.decoder_weight is not None else []
        rest = [p for p in sae.parameters() if not any(p is q for q in own)]
        self.opts = [make(rest, lr)]
        if own:
            self.opts.append(make(own, lr * decoder_lr_scale(sae.d_in)))

    def step(self) -> None:
        for o in self.opts:
            o.step()

    def zero_grad(self) -> None:
        for o in self.opts:
            o.zero_grad()


def decoder_lr_scale(d_in: int) -> float:
    """The factor on lr for a unit-norm (untied topk) decoder: √(DECODER_LR_WIDTH / d_in)."""
    return math.sqrt(DECODER_LR_WIDTH / d_in)


@dataclass(frozen=True)
class SaeTraining:
    """How an SAE is trained: the one set of settings `train_sae`, `train_saes` and
    `train_sae_reference` share (so the fast loop, the pool and the reference cannot drift apart).

    `architecture` "relu_l1" (the paper method; `tied` defaults to True; `k` is ignored) or "topk"
    (`k` codes per row, default lfp.sae.architectures.topk.DEFAULT_K; `tied` defaults to False; `l1` is ignored: a TopK SAE
    is sparse by construction, so no penalty is trained or reported; the auxiliary loss weighs
    `aux_coeff` (0 = off) over the top `aux_k` (0: d_in // 2) latents dead for `dead_window`
    rows). At most `max_rows` rows (a seeded subset) are used; each of `epochs` visits them in a
    fresh order seeded by `seed`, in contiguous batches of `batch_size`.
    """

    l1: float
    lr: float
    batch_size: int
    epochs: int
    seed: int
    tied: bool | None = None
    max_rows: int | None = None
    architecture: str = PAPER_METHOD
    k: int | None = None
    aux_k: int = 0
    aux_coeff: float = AUX_COEFF
    dead_window: int = DEAD_WINDOW_ROWS

    def arch(self) -> dict[str, Any]:
        """The SparseAutoencoder's `architecture`, `k`, `tied` with the architecture's defaults filled in."""
        return architecture_named(self.architecture).settings(self.k, self.tied)


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


def init_generator(seed: int, d_in: int, d_hidden: int) -> torch.Generator:
    """The torch RNG for one SAE's init and batch order, seeded from (seed, d_in, d_hidden): the
    n and 2n dictionaries must not share their initial directions, or matching them would find
    similar features by construction."""
    state = np.random.SeedSequence([seed, d_in, d_hidden]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _check_acts(acts: np.ndarray | torch.Tensor, who: str) -> None:
    if acts.ndim != 2 or acts.shape[0] == 0:
        raise ArtifactError(f"{who}: activations must be a non-empty [rows, d_in] array, got shape {tuple(acts.shape)}")


def train_sae(
    acts: np.ndarray | torch.Tensor,
    d_hidden: int,
    settings: SaeTraining,
    *,
    threads: int | None = None,
    backend: str | None = None,
) -> tuple[SparseAutoencoder, dict[str, Any]]:
    """Train one SAE on the rows of `acts` [n_rows, d_in] (array, memmap or tensor).

    How: `settings` (SaeTraining; the last batch of an epoch may be smaller). Runs on `threads`
    torch threads (default 1: batch-32 GEMMs gain ≤ 1.5x from a second core on an idle machine and
    collapse ~10x on a busy one; to use several cores train several SAEs with `train_saes`).
    `backend` forces the GEMM path ("mkl"/"onednn"; default: `choose_backend`).
    Deterministic: the same arguments and backend give bit-identical weights.
    Returns the trained module (on CPU, eval mode) and stats: rows, steps, seconds, cpu_seconds (of
    the calling thread: robust to a shared CPU when threads=1), rows_per_s, first/final loss, mean
    loss per epoch, backend, and for topk dead_fraction_train (latents dead at the end).
    """
    _check_acts(acts, "train_sae")
    with torch_threads(threads or 1):
        return _train(acts, d_hidden, settings, backend)


def train_saes(
    jobs: Sequence[tuple[Loader, int]], settings: SaeTraining, *, workers: int | None = None,
) -> list[tuple[SparseAutoencoder, dict[str, Any]]]:
    """Train independent SAEs — `jobs` = [(load activations, d_hidden)] — one per core at a time.

    Why: batch-32 GEMMs scale poorly over threads (and collapse on a busy machine), while
    independent single-threaded trainings scale with cores. Each result is identical to
    `train_sae(load(), d_hidden, settings, threads=1)`; loaders run inside the workers, so at most
    `workers` activation sets are in memory at once. Largest dictionaries start first. A shape's
    GEMM path is chosen in the first worker that needs it (`choose_backend`: measured once per
    machine for large SAEs, under a lock, so the other jobs of that shape wait for the choice).
    """
    workers = max(1, min(workers or usable_cores(), len(jobs) or 1))

    def one(job: tuple[Loader, int]) -> tuple[SparseAutoencoder, dict[str, Any]]:
        torch.set_num_threads(1)  # per OS thread: MKL/OpenMP thread counts are thread-local
        acts = job[0]()
        _check_acts(acts, "train_saes")
        return _train(acts, job[1], settings, None)

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
    acts: np.ndarray | torch.Tensor, d_hidden: int, settings: SaeTraining, backend: str | None,
) -> tuple[SparseAutoencoder, dict[str, Any]]:
    """The training loop of `train_sae` under the caller's thread setting."""
    s = settings
    seed, batch_size, epochs, l1, lr = s.seed, s.batch_size, s.epochs, s.l1, s.lr
    data = as_float_tensor(acts, select_rows(int(acts.shape[0]), s.max_rows, seed))
    n_rows, d_in = data.shape
    gen = init_generator(seed, d_in, d_hidden)
    sae = SparseAutoencoder(d_in, d_hidden, **s.arch())
    sae.reset_parameters(gen)
    sae.arch.init_from_data_(sae, data)
    if backend is None:
        backend = choose_backend(sae, batch_size)
    step = GradientStep(sae, sae.arch.trained_l1(l1), backend=backend, aux_k=s.aux_k, aux_coeff=s.aux_coeff,
                        dead_window=s.dead_window)
    opt = _Adams(sae, lr, FusedAdam)
    if sae.unit_norm_decoder:  # unit-norm decoder directions (columns of decoder_weight)
        weight, squares = sae.decoder_weight.detach(), torch.empty(d_in, d_hidden)
        norms = torch.empty(1, d_hidden)

        def normalize(w: torch.Tensor, norms: torch.Tensor) -> None:
            normalize_columns_with_(w, norms, squares)
    else:  # unit-norm encoder rows (the paper; tied topk: the shared matrix)
        weight, norms, normalize = sae.encoder_weight.detach(), torch.empty(d_hidden, 1), normalize_rows_with_
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
                normalize(weight, norms)
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
        "first_loss": first_loss, "final_loss": final_loss, "epoch_loss": losses.tolist(), "backend": step.backend,
    }
    if step.dead is not None:
        stats["dead_fraction_train"] = float(step.dead.mask().float().mean())
    return sae, stats


def train_sae_reference(
    acts: np.ndarray | torch.Tensor, d_hidden: int, settings: SaeTraining, *, threads: int | None = None,
) -> SparseAutoencoder:
    """The same algorithm written the plain way (autograd + torch.optim.Adam, batch by batch).

    Kept as the executable specification `train_sae` is tested against, and as the benchmark's
    baseline (same thread policy). Same seed ⇒ same init, same batches, so results agree to float
    rounding.
    """
    s = settings
    seed, batch_size, epochs, l1, aux_k, aux_coeff = s.seed, s.batch_size, s.epochs, s.l1, s.aux_k, s.aux_coeff
    data = as_float_tensor(acts, select_rows(int(acts.shape[0]), s.max_rows, seed))
    gen = init_generator(seed, data.shape[1], d_hidden)
    sae = SparseAutoencoder(data.shape[1], d_hidden, **s.arch())
    sae.reset_parameters(gen)
    sae.arch.init_from_data_(sae, data)
    opt = _Adams(sae, s.lr, lambda params, lr: torch.optim.Adam(params, lr=lr))
    dead = sae.arch.dead_latents(d_hidden, s.dead_window, aux_coeff)
    with torch_threads(threads or 1):
        for _ in range(epochs):
            data = data[torch.randperm(data.shape[0], generator=gen)]
            for lo in range(0, data.shape[0], batch_size):
                x = data[lo : lo + batch_size]
                opt.zero_grad()
                sae.loss(x, sae.arch.trained_l1(l1), dead=None if dead is None else dead.mask(), aux_k=aux_k, aux_coeff=aux_coeff).backward()
                if dead is not None:  # which latents fired on this batch, before the update
                    with torch.no_grad():
                        dead.update(sae.encode(x))
                opt.step()
                sae.normalize_()
    return sae.eval()
