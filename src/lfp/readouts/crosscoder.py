"""A TopK crosscoder over base and fine-tuned activations of the same tokens, with Latent Scaling.

Why: two SAEs trained separately (the paper's readout) cannot say which features fine-tuning added:
their latents are not matched. A crosscoder (Lindsey et al. 2024, "Sparse crosscoders") reads both
models' activations of the same token into ONE sparse code with a decoder per model, so every
latent has a base and a fine-tuned decoder vector. Its relative decoder norm
||d_ft|| / (||d_base|| + ||d_ft||) is 1 for a latent only the fine-tune uses, 0.5 for a shared one.
Minder et al. 2025 (arXiv 2504.02922) show that an ℓ1 crosscoder calls shared latents fine-tune-only
when the base model's activations merely *reconstruct* worse; they use a TopK sparsity and Latent
Scaling: per latent j, the closed-form least-squares scale β_m that best explains, in model m, the
part of m's activation latent j should carry (m's reconstruction error plus j's own contribution)
with the latent's fine-tuned decoder direction. ν = β_base / β_ft is near 0 for a latent the base
model really lacks, near 1 for a shared one.

Training: Adam on the sum of both models' MSE, each model's activations divided by its mean norm
(the scales are stored), TopK per row, decoder rows renormalised to unit joint norm after each step,
a seeded init with encoder = decoderᵀ. Small on purpose: a CPU trains it in seconds on the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

CROSSCODER_DIR = Path("data/diffing")


@dataclass(frozen=True)
class CrosscoderSettings:
    """What a crosscoder run needs (params `diffing.*`)."""

    n_latents: int
    k: int
    steps: int = 2000
    batch_size: int = 256
    learning_rate: float = 1e-3
    seed: int = 0


class Crosscoder(torch.nn.Module):
    """Two-model TopK crosscoder: code = TopK(W_b a_b + W_f a_f + b), a_m ≈ D_m code + c_m."""

    def __init__(self, d_model: int, n_latents: int, k: int, generator: torch.Generator) -> None:
        super().__init__()
        dec = torch.randn(2, n_latents, d_model, generator=generator)
        dec = dec / dec.norm(dim=(0, 2), keepdim=True)
        self.decoder = torch.nn.Parameter(dec * 0.5)  # [model, latent, d]
        self.encoder = torch.nn.Parameter(dec.transpose(1, 2).clone() * 0.5)  # [model, d, latent]
        self.encoder_bias = torch.nn.Parameter(torch.zeros(n_latents))
        self.decoder_bias = torch.nn.Parameter(torch.zeros(2, d_model))
        self.k = k

    def encode(self, acts: torch.Tensor) -> torch.Tensor:
        """acts [n, 2, d] -> codes [n, latents], TopK per row after a ReLU."""
        pre = torch.einsum("nmd,mdl->nl", acts, self.encoder) + self.encoder_bias
        pre = torch.relu(pre)
        top = torch.topk(pre, self.k, dim=1)
        return torch.zeros_like(pre).scatter_(1, top.indices, top.values)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nl,mld->nmd", codes, self.decoder) + self.decoder_bias

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        norm = self.decoder.norm(dim=(0, 2), keepdim=True).clamp_min(1e-8)
        self.decoder.div_(norm)


def _stack(base: np.ndarray, finetuned: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """[n, 2, d] float32, each model divided by its mean activation norm (returned)."""
    if base.shape != finetuned.shape:
        raise ValueError(f"base activations {base.shape} and fine-tuned {finetuned.shape} are not the same tokens")
    scales = np.array([np.linalg.norm(a, axis=1).mean() for a in (base, finetuned)], dtype=np.float64)
    scales[scales == 0] = 1.0
    x = np.stack([base / scales[0], finetuned / scales[1]], axis=1).astype(np.float32)
    return torch.from_numpy(x), scales


def train_crosscoder(base: np.ndarray, finetuned: np.ndarray, s: CrosscoderSettings) -> tuple[Crosscoder, np.ndarray]:
    """A crosscoder on paired rows (the same tokens through both models) and the two norm scales."""
    x, scales = _stack(base, finetuned)
    gen = torch.Generator().manual_seed(s.seed)
    cc = Crosscoder(x.shape[2], s.n_latents, min(s.k, s.n_latents), gen)
    with torch.no_grad():
        cc.decoder_bias.copy_(x.mean(dim=0))
    opt = torch.optim.Adam(cc.parameters(), lr=s.learning_rate)
    for _ in range(s.steps):
        batch = x[torch.randint(0, len(x), (min(s.batch_size, len(x)),), generator=gen)]
        loss = (cc.decode(cc.encode(batch)) - batch).pow(2).sum(dim=2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        cc.normalise_decoder()
    return cc.eval(), scales


@torch.no_grad()
def crosscoder_codes(cc: Crosscoder, base: np.ndarray, finetuned: np.ndarray, scales: np.ndarray, batch: int = 4096) -> np.ndarray:
    x = torch.from_numpy(np.stack([base / scales[0], finetuned / scales[1]], axis=1).astype(np.float32))
    return torch.cat([cc.encode(x[i : i + batch]) for i in range(0, len(x), batch)]).numpy()


def layered_codes(crosscoders: list[tuple[Crosscoder, np.ndarray]], base_raw: np.ndarray, run_raw: np.ndarray) -> np.ndarray:
    """Per layer, the crosscoder codes of (base, run) activations, concatenated in layer order; the
    raw arrays hold each layer's d_model block side by side (the identity dictionary's layout)."""
    d_model = base_raw.shape[1] // len(crosscoders)
    parts = []
    for i, (cc, scales) in enumerate(crosscoders):
        b = np.ascontiguousarray(base_raw[:, i * d_model : (i + 1) * d_model], dtype=np.float32)
        r = np.ascontiguousarray(run_raw[:, i * d_model : (i + 1) * d_model], dtype=np.float32)
        parts.append(crosscoder_codes(cc, b, r, scales))
    return np.concatenate(parts, axis=1)


@torch.no_grad()
def quality(cc: Crosscoder, base: np.ndarray, finetuned: np.ndarray, scales: np.ndarray) -> dict[str, Any]:
    """FVU per model (1 − explained variance of the normalised activations), mean L0, dead latents."""
    x = torch.from_numpy(np.stack([base / scales[0], finetuned / scales[1]], axis=1).astype(np.float32))
    codes = torch.from_numpy(crosscoder_codes(cc, base, finetuned, scales))
    recon = cc.decode(codes)
    out: dict[str, Any] = {}
    for m, name in enumerate(("base", "finetuned")):
        err = (recon[:, m] - x[:, m]).pow(2).sum()
        var = (x[:, m] - x[:, m].mean(dim=0)).pow(2).sum()
        out[f"fvu_{name}"] = float(err / var)
    out["l0"] = float((codes > 0).float().sum(dim=1).mean())
    out["dead_fraction"] = float(((codes > 0).sum(dim=0) == 0).float().mean())
    return out


def relative_decoder_norm(cc: Crosscoder) -> np.ndarray:
    """Per latent ||d_ft|| / (||d_base|| + ||d_ft||): 1 fine-tune-only, 0.5 shared, 0 base-only."""
    norms = cc.decoder.detach().norm(dim=2).double().numpy()  # [model, latent]
    return norms[1] / np.maximum(norms[0] + norms[1], 1e-12)


@torch.no_grad()
def latent_scaling(cc: Crosscoder, base: np.ndarray, finetuned: np.ndarray, scales: np.ndarray) -> dict[str, np.ndarray]:
    """Per latent: β_base, β_ft (closed-form least squares of each model's target on f_j · d_ft_j,
    where the target is the model's reconstruction error plus latent j's own contribution) and
    ν = β_base / β_ft (NaN for a latent that never fires)."""
    x = torch.from_numpy(np.stack([base / scales[0], finetuned / scales[1]], axis=1).astype(np.float64))
    codes = torch.from_numpy(crosscoder_codes(cc, base, finetuned, scales)).double()
    dec = cc.decoder.detach().double()  # [model, latent, d]
    recon = torch.einsum("nl,mld->nmd", codes, dec) + cc.decoder_bias.detach().double()
    d_ft = dec[1]  # [latent, d]: the direction whose presence in each model is measured
    denom = codes.pow(2).sum(dim=0) * d_ft.pow(2).sum(dim=1)  # Σ f_j² ||d_j||²
    betas = []
    for m in range(2):
        resid = x[:, m] - recon[:, m]  # [n, d]
        own = (dec[m] * d_ft).sum(dim=1)  # ⟨d_m_j, d_ft_j⟩: latent j's own contribution in model m, projected
        num = (codes * (resid @ d_ft.T)).sum(dim=0) + codes.pow(2).sum(dim=0) * own
        betas.append(torch.where(denom > 0, num / denom.clamp_min(1e-30), torch.full_like(num, float("nan"))).numpy())
    beta_base, beta_ft = betas
    with np.errstate(divide="ignore", invalid="ignore"):
        nu = np.where(np.abs(beta_ft) > 1e-12, beta_base / beta_ft, np.nan)
    return {"beta_base": beta_base, "beta_finetuned": beta_ft, "nu": nu}


def specific(nu: np.ndarray, cut: float) -> np.ndarray:
    """The fine-tune-specific latents: |ν| < cut (ν near 0; a large negative ν is a latent whose
    fine-tuned scale is ~0, i.e. noise in the ratio, not a direction the base model lacks)."""
    nu = np.asarray(nu, dtype=float)
    return np.isfinite(nu) & (np.abs(nu) < cut)


def nu_histogram(nu: np.ndarray, edges: tuple[float, ...] = (-np.inf, 0.2, 0.4, 0.6, 0.8, 1.2, np.inf)) -> dict[str, int]:
    """Counts of ν per bin (the report's histogram), live latents only."""
    live = nu[np.isfinite(nu)]
    counts, _ = np.histogram(live, bins=np.array(edges))
    labels = [f"{'-inf' if lo == -np.inf else f'{lo:g}'}..{'inf' if hi == np.inf else f'{hi:g}'}" for lo, hi in zip(edges[:-1], edges[1:])]
    return dict(zip(labels, (int(c) for c in counts)))


def crosscoder_path(model: str, task: str, layer: int) -> Any:
    """One layer's crosscoder (stage diffing writes it, the measure reads it)."""
    from lfp.core import paths

    return CROSSCODER_DIR / paths.run_id(model, task) / f"crosscoder-layer{layer}.safetensors"


def save_crosscoder(path: Any, cc: Crosscoder, scales: np.ndarray, nu: np.ndarray, layer: int) -> None:
    """One layer's crosscoder as safetensors (weights, the two norm scales, ν per latent), atomically:
    the measure reads it back to score every run (lfp.readouts.crosscoder_probe)."""
    from lfp.core import io

    tensors = {name: p.detach().contiguous() for name, p in cc.state_dict().items()}
    tensors.update(scales=torch.from_numpy(np.asarray(scales, dtype=np.float64)), nu=torch.from_numpy(np.asarray(nu, dtype=np.float64)))
    io.save_tensors(path, tensors, {"k": str(cc.k), "layer": str(layer), "format": "lfp-crosscoder-1"})


def load_crosscoder(path: Any) -> tuple[Crosscoder, np.ndarray, np.ndarray]:
    """(crosscoder, norm scales, ν per latent) saved by `save_crosscoder`."""
    from safetensors import safe_open

    from lfp.core import io
    from lfp.core.errors import ArtifactError

    tensors = io.load_tensors(path)
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if meta.get("format") != "lfp-crosscoder-1" or "decoder" not in tensors:
        raise ArtifactError(f"{path}: not an lfp crosscoder file (re-run the diffing stage)")
    _, n_latents, d_model = tensors["decoder"].shape
    cc = Crosscoder(d_model, n_latents, int(meta["k"]), torch.Generator().manual_seed(0))
    cc.load_state_dict({k: v for k, v in tensors.items() if k not in ("scales", "nu")})
    return cc.eval(), tensors["scales"].numpy(), tensors["nu"].numpy()
