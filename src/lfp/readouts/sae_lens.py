"""The activation-difference lens read through a dictionary's latents (issue #28 item 2): what a
fine-tune changed *everywhere*, in the dictionary's own terms rather than the unembedding's.

The logit-difference lens (lfp.readouts.diff_lens) reads the mean final-hidden-state difference
through W_U. These read, at each dictionary layer, the mean MLP-output difference d_L = mean h_policy
− mean h_base over the first tokens of held-out texts (position 0, the start token, left out),
projected on every latent's unit decoder direction: s_L = D̂_L d_L, the global shift along each
latent. Per word, the readout is how much that shift runs along the latents the word uses: Σ_L
s_L · p_w,L, where p_w,L is the base model's mean code of the word in its real contexts through the
same dictionary, normalised to sum 1 per layer (a weighted mean of the shifts of the word's own
latents). A reward fine-tune that learned to avoid a word should shift the residual away from that
word's latents. Two dictionaries, one lens:
- `sae_diff_lens`: the fine-tuned SAEs (decoder rows; profiles = base codes through them);
- `crosscoder_diff_lens`: the diffing stage's crosscoder, along each latent's *fine-tuned* decoder
  direction; profiles = the crosscoder codes of (base, base) activations, the same reference the
  crosscoder probe subtracts. Its top latents carry their Latent Scaling ν: a shift that runs along
  latents with ν ≈ 0 runs along what the base model lacks.
Each is read twice, with the words profiled at two places (`PROFILED_AT`): at the word's own tokens,
and at the positions that *predict* them (the token before each, `_at_prediction`). The learned value
is a change of log p(word | context), decided at the predicting position, and the logit lens reads
exactly that decision; a lens profiled at the word itself reads what the word means once it is there.
Both lenses share one `LensMeans`: the policy's forward pass over the lens windows is paid once.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lfp.models.loading import capture_mlp_outputs

EPS = 1e-12
PROFILED_AT = {"": "the word's own tokens", "_at_prediction": "the positions that predict the word's tokens"}


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
        raise ValueError("the dictionary difference lens has no text windows")
    return {layer: t / count for layer, t in totals.items()}


class LensMeans:
    """The base model's mean MLP outputs over the lens windows, and the last policy's difference from
    them (kept while that policy lives, so every lens of one run reads one forward pass)."""

    def __init__(self, base: Any, layers: list[int], windows: Sequence[Sequence[int]], batch_size: int) -> None:
        self.layers, self.windows, self.batch_size = list(layers), list(windows), batch_size
        self.base = mean_mlp_outputs(base, self.layers, self.windows, batch_size)
        self._last: tuple[Any, dict[int, torch.Tensor]] | None = None

    def difference(self, policy: Any) -> dict[int, torch.Tensor]:
        if self._last is not None and self._last[0]() is policy:
            return self._last[1]
        mean = mean_mlp_outputs(policy, self.layers, self.windows, self.batch_size)
        diff = {L: mean[L] - self.base[L] for L in self.layers}
        self._last = (weakref.ref(policy), diff)
        return diff


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


def unit_rows(rows: torch.Tensor) -> torch.Tensor:
    rows = rows.detach().double().cpu()
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(EPS)


class DictionaryDiffLens:
    """A readout (lfp.readouts.Readout): the lens windows' mean MLP-output difference on one
    dictionary's unit decoder directions, read per word through the word's own latents."""

    differential = True

    def __init__(self, name: str, description: str, means: LensMeans, directions: list[torch.Tensor], codes: np.ndarray,
                 words: Sequence[str], latent_nu: np.ndarray | None = None, at: str = "") -> None:
        self.name, self.description, self.means, self.at = name, description, means, at
        self.directions = [unit_rows(d) for d in directions]  # per layer: latents x d
        self.widths = [int(d.shape[0]) for d in self.directions]
        self.profiles = word_profiles(codes, words, self.widths)
        self.latent_nu = latent_nu  # per latent, all layers concatenated (crosscoder only)

    def shifts(self, policy: Any) -> np.ndarray:
        """The global shift along every latent, all layers concatenated: D̂_L (mean h_policy − mean h_base)."""
        diff = self.means.difference(policy)
        return torch.cat([d @ diff[L] for L, d in zip(self.means.layers, self.directions)]).numpy()

    def per_word(self, policy: Any) -> dict[str, float]:
        s = self.shifts(policy)
        return {w: float(p @ s) for w, p in self.profiles.items()}

    def top_latents(self, policy: Any, k: int = 10) -> dict[str, list[Any]]:
        """The latents the shift runs along most, as 'L{layer}:{latent}' (positive and negative), with
        their ν where the dictionary has one."""
        s = self.shifts(policy)
        names = [f"L{L}:{j}" for L, width in zip(self.means.layers, self.widths) for j in range(width)]
        order = np.argsort(s)
        out: dict[str, list[Any]] = {}
        for side, idx in (("positive", order[::-1][:k]), ("negative", order[:k])):
            out[side] = [names[i] for i in idx]
            if self.latent_nu is not None:
                out[f"{side}_nu"] = [None if not np.isfinite(self.latent_nu[i]) else round(float(self.latent_nu[i]), 3) for i in idx]
        return out


def sae_diff_lens(means: LensMeans, saes: dict[int, Any], base_codes: np.ndarray, words: Sequence[str],
                  at: str = "") -> DictionaryDiffLens:
    """`sae_diff_lens{at}`: the fine-tuned SAEs' decoder rows; `base_codes` = the base model's codes of
    each word context through those SAEs (element_codes order), read where `at` says (PROFILED_AT)."""
    return DictionaryDiffLens(
        f"sae_diff_lens{at}",
        "mean (fine-tuned − base) MLP output over the first tokens of held-out texts, on the SAEs' decoder directions, "
        f"weighted by each word's latents in context at {PROFILED_AT[at]}",
        means, [sae.dictionary() for sae in saes.values()], base_codes, words, at=at)


def crosscoder_diff_lens(means: LensMeans, crosscoders: Sequence[tuple[Any, np.ndarray, np.ndarray]], base_raw: np.ndarray,
                         words: Sequence[str], at: str = "") -> DictionaryDiffLens:
    """`crosscoder_diff_lens`: per layer (in `means.layers` order) a (crosscoder, norm scales, ν) of
    lfp.readouts.crosscoder; `base_raw` = the base model's pooled MLP outputs of each word context,
    the layers' blocks side by side. Profiles are the codes of (base, base): the crosscoder probe's reference."""
    from lfp.readouts.crosscoder import layered_codes

    codes = layered_codes([(cc, scales) for cc, scales, _ in crosscoders], base_raw, base_raw)
    nu = np.concatenate([np.asarray(n, dtype=np.float64) for _, _, n in crosscoders])
    return DictionaryDiffLens(
        f"crosscoder_diff_lens{at}",
        "the same mean MLP-output change on the crosscoder's fine-tuned decoder directions, weighted by each word's "
        f"crosscoder latents in context at {PROFILED_AT[at]}",
        means, [cc.decoder[1] for cc, _, _ in crosscoders], codes, words, latent_nu=nu, at=at)
