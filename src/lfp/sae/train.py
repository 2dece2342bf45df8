"""Training relu_l1 SAEs on cached activations: the fast loop, the parallel pool, the reference.

`train_sae` runs the paper's algorithm (Adam, batch 32, MSE + l1·‖f‖₁, unit-norm encoder rows
before every step) with `GradientStep` and `FusedAdam` instead of autograd + torch.optim;
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
from typing import Any

import numpy as np
import torch

from lfp.errors import ArtifactError
from lfp.sae.model import SparseAutoencoder, normalize_rows_
from lfp.sae.optim import FusedAdam
from lfp.sae.rows import as_float_tensor, select_rows
from lfp.sae.step import GradientStep, normalize_rows_with_

Loader = Callable[[], np.ndarray | torch.Tensor]  # loads one SAE's training activations


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
    _check_acts(acts, "train_sae")
    with torch_threads(threads or 1):
        return _train(acts, d_hidden, l1=l1, lr=lr, batch_size=batch_size, epochs=epochs, seed=seed, tied=tied, max_rows=max_rows)


def train_saes(
    jobs: Sequence[tuple[Loader, int]],
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

    def one(job: tuple[Loader, int]) -> tuple[SparseAutoencoder, dict[str, Any]]:
        torch.set_num_threads(1)  # per OS thread: MKL/OpenMP thread counts are thread-local
        acts = job[0]()
        _check_acts(acts, "train_saes")
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
    step = GradientStep(sae, l1)
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
                normalize_rows_with_(weight, norms)
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
