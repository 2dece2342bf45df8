"""SAE codes of contrastive elements: A(x) = per chosen layer the mean SAE code over the element's
tokens, concatenated in layer order. Padding never enters a mean; only the transformer body runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lfp.models.loading import capture_mlp_outputs
from lfp.measure.triples import ROLES, Triples, windows_for


def _pad_batch(windows: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and a boolean mask of the positions to pool."""
    width = max(len(ids) for ids, _ in windows)
    ids_t = torch.full((len(windows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(windows), width), dtype=torch.long)
    sel = torch.zeros((len(windows), width), dtype=torch.bool)
    for r, (ids, pos) in enumerate(windows):
        ids_t[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attn[r, : len(ids)] = 1
        sel[r, pos] = True
    return ids_t, attn, sel


@torch.inference_mode()
def element_codes(
    model: Any, saes: dict[int, Any], windows: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int, desc: str = "codes"
) -> np.ndarray:
    """A(x) for each window: per layer (in `saes` order) the mean SAE code over the selected
    positions, concatenated. Windows are length-sorted into batches to limit padding."""
    return element_codes_sets(model, [saes], windows, batch_size, pad_id, desc)[0]


@torch.inference_mode()
def element_codes_sets(
    model: Any, sae_sets: list[dict[int, Any]], windows: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int,
    desc: str = "codes", on_hidden: Callable[[np.ndarray, torch.Tensor], None] | None = None,
) -> list[np.ndarray]:
    """`element_codes` through several dictionaries of the same layers from ONE forward pass (the
    forward pass is the cost: a base model read through both its own and the fine-tuned SAEs).
    `on_hidden(window indices, last hidden state)` sees each batch's final states: a caller that also
    needs the model's predictions on the same windows reads them from this pass instead of a second."""
    device = next(model.parameters()).device
    layers = list(sae_sets[0])
    if any(list(saes) != layers for saes in sae_sets):
        raise ValueError("element_codes_sets: every dictionary set must cover the same layers in the same order")
    outs = [np.zeros((len(windows), sum(int(sae.d_hidden) for sae in saes.values())), dtype=np.float32) for saes in sae_sets]
    order = np.argsort([len(ids) for ids, _ in windows], kind="stable")
    with capture_mlp_outputs(model, layers) as captured:
        for b in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
            idx = order[b : b + batch_size]
            ids, attn, sel = _pad_batch([windows[i] for i in idx], pad_id)
            # the transformer body only: the hooks need no logits (Gemma's LM head is 256k wide)
            out_body = model.base_model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False)
            if on_hidden is not None:
                on_hidden(idx, out_body.last_hidden_state)
            rows, cols = sel.nonzero(as_tuple=True)
            counts = sel.sum(1, keepdim=True).float().to(device)
            rows, cols = rows.to(device), cols.to(device)
            for saes, out in zip(sae_sets, outs):
                parts = []
                for layer, sae in saes.items():
                    codes = sae.encode(captured[layer][rows, cols].float())
                    pooled = torch.zeros((len(idx), codes.shape[1]), device=device).index_add_(0, rows, codes)
                    parts.append(pooled / counts)
                out[idx] = torch.cat(parts, dim=1).cpu().numpy()
    return outs


def codes_for(model: Any, tokenizer: Any, saes: dict[int, Any], triples: Triples, cfg: Any, desc: str) -> dict[str, np.ndarray]:
    """role -> A(x) of every triple's element (`cfg`: the probe section: max_length, batch_size)."""
    return {
        role: element_codes(model, saes, windows_for(triples, role, tokenizer, cfg.max_length), cfg.batch_size,
                            tokenizer.pad_token_id, f"{desc} {role}")
        for role in ROLES
    }
