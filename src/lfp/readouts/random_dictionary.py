"""A dictionary of random, frozen feature directions: the control for what a *trained* SAE adds.

Why: Korznikov et al. 2026 find SAEs whose feature directions are random and frozen nearly match
trained SAEs on interpretability and probing scores. A probe that reads a feedback pattern through
the trained SAE's codes means something about the SAE only if it beats the same probe through random
directions of the same width and sparsity. Here the directions are Gaussian, unit-norm and never
trained; what is fitted is only what any dictionary needs to be used at all: the activations' mean
(subtracted before encoding, as a trained SAE's bias would) and the number of active latents per
token, set to the trained SAE's mean L0 on the same activations (TopK after a ReLU). Same width,
same sparsity, no learning: what a probe reads through it is what the activations give any
sparse random basis.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class RandomDirectionDictionary(torch.nn.Module):
    """codes = TopK_k(ReLU(W (x − μ))), W's rows random unit vectors; `encode` and `d_hidden` as an
    SAE has them, so it goes wherever the probe codes an SAE's activations."""

    def __init__(self, directions: torch.Tensor, mean: torch.Tensor, k: int) -> None:
        super().__init__()
        self.register_buffer("directions", directions)
        self.register_buffer("mean", mean)
        self.k = int(k)
        self.d_hidden = int(directions.shape[0])

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu((x.to(self.directions.dtype) - self.mean) @ self.directions.T)
        top = torch.topk(pre, self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, top.values)


@torch.no_grad()
def mean_l0(sae: Any, sample: np.ndarray, batch: int = 4096) -> float:
    """The trained dictionary's mean number of active latents per row of `sample`."""
    x = torch.from_numpy(np.asarray(sample, dtype=np.float32))
    weights = list(sae.parameters())
    total = 0.0
    for i in range(0, len(x), batch):
        rows = x[i : i + batch]
        total += float((sae.encode(rows.to(weights[0].device) if weights else rows) > 0).sum())
    return total / max(len(x), 1)


def random_like(sae: Any, sample: np.ndarray, seed: int) -> RandomDirectionDictionary:
    """A random-direction dictionary of `sae`'s width and mean L0 on `sample` (activations of the
    layer it codes), centred on the sample's mean."""
    d_in = int(sample.shape[1])
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn(int(sae.d_hidden), d_in, generator=gen)
    directions = directions / directions.norm(dim=1, keepdim=True)
    k = int(np.clip(round(mean_l0(sae, sample)), 1, int(sae.d_hidden)))
    mean = torch.from_numpy(np.asarray(sample, dtype=np.float64).mean(axis=0).astype(np.float32))
    return RandomDirectionDictionary(directions, mean, k).eval()


class Identity(torch.nn.Module):
    """The activations themselves as a 'dictionary' (encode = identity): the raw pooled activations a
    crosscoder encodes come out of the same forward pass as the SAE codes."""

    def __init__(self, d_in: int) -> None:
        super().__init__()
        self.d_hidden = int(d_in)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()
