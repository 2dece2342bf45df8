"""Explanations of the crosscoder's fine-tune-specific latents, labelled like the paper's features.

Why: a latent with Latent Scaling ν ≈ 0 is a direction the fine-tuned model uses and the base model
lacks (lfp.readouts.crosscoder); what it is about is the first thing a reader asks. The same
explainer, records and related/unrelated rule as the SAE features (lfp.validation), on the same
corpus; each token's code comes from BOTH models' activations of that token (base and fine-tuned
forward passes of one batch), as the crosscoder was trained. The latents: |ν| < diffing.specific_nu
(near 0: a large negative ν is a latent whose fine-tuned scale β_ft is ~0, noise, not a new
direction), |ν| ascending over all chosen layers, at most `explain.crosscoder_latents`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lfp.readouts.crosscoder import crosscoder_codes, crosscoder_path, load_crosscoder, specific
from lfp.validation import corpus, records


def specific_latents(model: str, task: str, layers: list[int], cut: float,
                     limit: int) -> tuple[dict[int, list[tuple[int, float]]], dict[int, Any], int]:
    """Per layer the latents to explain as (latent, ν), each layer's (crosscoder, scales), and how
    many latents are below the cut in all."""
    crosscoders, candidates = {}, []
    for L in layers:
        cc, scales, nu = load_crosscoder(crosscoder_path(model, task, L))
        crosscoders[L] = (cc, scales)
        candidates += [(abs(float(nu[j])), L, int(j), float(nu[j])) for j in np.flatnonzero(specific(nu, cut))]
    chosen: dict[int, list[tuple[int, float]]] = {L: [] for L in layers}
    for _, L, j, nu in sorted(candidates)[:limit]:
        chosen[L].append((j, nu))
    return chosen, crosscoders, len(candidates)


def encode(base: Any, finetuned: Any, tokenizer: Any, crosscoders: dict[int, Any], chosen: dict[int, list[tuple[int, float]]],
           texts: list[str], max_length: int, batch_size: int, device: Any) -> list[corpus.EncodedText]:
    """The corpus with, per layer, the chosen latents' crosscoder codes of every token."""
    layers = [L for L in sorted(chosen) if chosen[L]]

    def codes(L: int, acts: list[torch.Tensor]) -> torch.Tensor:
        cc, scales = crosscoders[L]
        shape = acts[0].shape
        b, f = (a.reshape(-1, shape[-1]).float().cpu().numpy() for a in acts)
        kept = crosscoder_codes(cc, b, f, scales)[:, [j for j, _ in chosen[L]]]
        return torch.from_numpy(kept).reshape(shape[0], shape[1], -1)

    return corpus.encode_corpus_with([base, finetuned], tokenizer, layers, codes, texts, max_length, batch_size, device)


def explain_latents(encoded: list[corpus.EncodedText], chosen: dict[int, list[tuple[int, float]]], explainer: Any, cfg: Any,
                    seed: int) -> list[dict[str, Any]]:
    """One row per latent: its explanation, related label, top tokens and contexts (features.jsonl's fields + ν)."""
    rows = []
    for L in sorted(chosen):
        for column, (latent, nu) in enumerate(chosen[L]):
            record = records.feature_record(encoded, L, column, latent, nu, cfg.n_contexts, cfg.context_tokens,
                                            np.random.default_rng([seed, L, latent]))
            result = explainer.explain(record)
            rows.append({"layer": L, "latent": latent, "nu": nu, "explanation": result.explanation, "related": result.related,
                         "backend": explainer.name, "top_tokens": result.top_tokens, "simulation_score": result.simulation_score,
                         "max_activation": record.max_activation, "contexts": records.context_rows(record.top)})
    return rows


def summary(rows: list[dict[str, Any]], n_candidates: int) -> dict[str, Any]:
    """explain.json keys `crosscoder_latents_*`."""
    return {"crosscoder_latents_explained": len(rows), "crosscoder_latents_below_cut": n_candidates,
            "crosscoder_latents_related": sum(r["related"] is True for r in rows),
            "crosscoder_latents_unrelated": sum(r["related"] is False for r in rows),
            "crosscoder_latents_dead_on_corpus": sum(not r["contexts"] for r in rows)}
