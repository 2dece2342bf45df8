"""The activation-difference lens read through the SAE latents (issue #28 item 2): what a fine-tune
changed *everywhere*, in the dictionary's own terms rather than the unembedding's.

The logit-difference lens (lfp.readouts.diff_lens) reads the mean final-hidden-state difference
through W_U. This one takes, at each SAE layer, the mean MLP-output difference d_L = mean h_policy −
mean h_base over the first tokens of held-out texts (position 0, the start token, left out) and
projects it on every latent's unit decoder direction: s_L = D̂_L d_L, the global shift along each
latent. Per word, the readout is how much that shift runs along the latents the word uses: Σ_L
s_L · p_w,L, where p_w,L is the base model's mean code of the word in its real contexts through the
same SAE, normalised to sum 1 per layer (a weighted mean of the shifts of the word's own latents).
A reward fine-tune that learned to avoid a word should shift the residual away from that word's
latents. `top_latents` names the latents the shift runs along most (the report reads them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lfp.measure.probe_codes import element_codes
from lfp.models.loading import capture_mlp_outputs

EPS = 1e-12


@torch.inference_mode()
def mean_mlp_outputs(model: Any, layers: list[int], windows: Sequence[Sequence[int]], batch_size: int) -> dict[int, torch.Tensor]:
    """Per layer, the mean MLP output over every window position but the first (float64, on CPU)."""
    device = next(model.parameters()).device
    totals: dict[int, torch.Tensor] = {}
    count = 0
    with capture_mlp_outputs(model, layers) as captured:
        for b in range(0, len(windows), batch_size):
            ids = torch.tensor(windows[b : b + batch_size], dtype=torch.long, device=device)
            model.base_model(input_ids=ids, use_cache=False)
            for layer in layers:
                s = captured[layer][:, 1:].double().sum(dim=(0, 1)).cpu()
                totals[layer] = s if layer not in totals else totals[layer] + s
            count += ids.shape[0] * (ids.shape[1] - 1)
    if not count:
        raise ValueError("the SAE difference lens has no text windows")
    return {layer: t / count for layer, t in totals.items()}


def word_profiles(codes: np.ndarray, words: Sequence[str], widths: Sequence[int]) -> dict[str, np.ndarray]:
    """word -> its mean code over its contexts, each layer's block normalised to sum 1 (all-zero blocks stay 0)."""
    out: dict[str, np.ndarray] = {}
    words_arr = np.asarray(words, dtype=object)
    bounds = np.concatenate([[0], np.cumsum(widths)])
    for w in sorted(set(words)):
        mean = codes[words_arr == w].astype(np.float64).mean(axis=0)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            total = mean[lo:hi].sum()
            mean[lo:hi] = mean[lo:hi] / total if total > EPS else 0.0
        out[w] = mean
    return out


class SaeDiffLens:
    """Readout `sae_diff_lens` (lfp.readouts.Readout): the mean MLP-output difference over the first
    tokens of held-out texts, projected on the fine-tuned SAEs' unit decoder directions, read per word
    through the word's own latents."""

    name = "sae_diff_lens"
    description = ("mean (fine-tuned − base) MLP output over the first tokens of held-out texts, on the SAEs' decoder directions, "
                   "weighted by each word's latents in context")
    differential = True

    def __init__(self, base: Any, saes: dict[int, Any], lens_windows: Sequence[Sequence[int]],
                 word_windows: list[tuple[list[int], list[int]]], words: Sequence[str], batch_size: int, pad_id: int) -> None:
        self.layers, self.windows, self.batch_size = list(saes), list(lens_windows), batch_size
        self.widths = [int(sae.d_hidden) for sae in saes.values()]
        rows = [sae.dictionary().double().cpu() for sae in saes.values()]
        self.directions = [r / r.norm(dim=1, keepdim=True).clamp_min(EPS) for r in rows]  # latents x d, unit rows
        self.base_mean = mean_mlp_outputs(base, self.layers, self.windows, batch_size)
        keep = [i for i, (_, pos) in enumerate(word_windows) if pos]
        codes = element_codes(base, saes, [word_windows[i] for i in keep], batch_size, pad_id, "sae lens word codes")
        self.profiles = word_profiles(codes, [words[i] for i in keep], self.widths)

    def shifts(self, policy: Any) -> np.ndarray:
        """The global shift along every latent, all layers concatenated: D̂_L (mean h_policy − mean h_base)."""
        mean = mean_mlp_outputs(policy, self.layers, self.windows, self.batch_size)
        return torch.cat([d @ (mean[L] - self.base_mean[L]) for L, d in zip(self.layers, self.directions)]).numpy()

    def per_word(self, policy: Any) -> dict[str, float]:
        s = self.shifts(policy)
        return {w: float(p @ s) for w, p in self.profiles.items()}

    def top_latents(self, policy: Any, k: int = 10) -> dict[str, list[str]]:
        """The latents the shift runs along most, as 'L{layer}:{latent}' (positive and negative)."""
        s = self.shifts(policy)
        names = [f"L{L}:{j}" for L, width in zip(self.layers, self.widths) for j in range(width)]
        order = np.argsort(s)
        return {"positive": [names[i] for i in order[::-1][:k]], "negative": [names[i] for i in order[:k]]}
