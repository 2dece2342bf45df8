"""The logit-difference lens: what a fine-tune changed *everywhere*, read through the unembedding.

Minder et al. ("Narrow finetuning leaves clearly readable traces", arXiv 2510.13900) find that the
mean activation difference between a fine-tuned and its base model over the first tokens of
arbitrary text, read through the unembedding, names what the fine-tune was about. A reward
fine-tune on a word lexicon may leave exactly such a global bias. Per word, the readout is the lens
vector's value at the word's token: (mean h_ft − mean h_base) · W_U[token(" word")], where h is the
final (normed) hidden state over the first `tokens` positions of held-out texts (position 0, the same
start token in every text, is left out). Only words that are ONE token after a space are scored: a
multi-token word's first piece is shared with other words, so its lens value is not the word's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from lfp.models.tokens import leading_special_ids


def single_token_ids(tokenizer: Any, words: Iterable[str]) -> dict[str, int]:
    """word -> its token id, for the words that are one token after a space."""
    out = {}
    for w in sorted(set(words)):
        ids = tokenizer.encode(" " + w, add_special_tokens=False)
        if len(ids) == 1:
            out[w] = int(ids[0])
    return out


def lens_windows(tokenizer: Any, texts: Sequence[str], tokens: int, limit: int) -> list[list[int]]:
    """The first `tokens` token ids of up to `limit` texts (after the model's start token: `<bos>`,
    or EOS for a tokenizer without one), all of the same length."""
    start = leading_special_ids(tokenizer) or [tokenizer.eos_token_id]
    out = []
    for text in texts:
        # only the opening is needed: 64 characters a token is far more than any tokenizer's longest piece
        ids = tokenizer.encode(text[: 64 * tokens], add_special_tokens=False)[:tokens]
        if len(ids) == tokens:
            out.append([*start, *ids])
        if len(out) >= limit:
            break
    return out


@torch.inference_mode()
def mean_final_hidden(model: Any, windows: Sequence[Sequence[int]], batch_size: int) -> torch.Tensor:
    """Mean final hidden state (after the final norm) over every window position but the first."""
    device = next(model.parameters()).device
    total, count = None, 0
    for b in range(0, len(windows), batch_size):
        ids = torch.tensor(windows[b : b + batch_size], dtype=torch.long, device=device)
        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state[:, 1:].double()
        s = hidden.sum(dim=(0, 1))
        total = s if total is None else total + s
        count += hidden.shape[0] * hidden.shape[1]
    if total is None:
        raise ValueError("the difference lens has no text windows")
    return (total / count).cpu()


class LogitDiffLens:
    """Readout `logit_diff_lens` (lfp.readouts.Readout): the base model's unembedding applied to the
    mean final-hidden-state difference over the first tokens of held-out texts."""

    name = "logit_diff_lens"
    description = "mean (fine-tuned − base) final hidden state over the first tokens of held-out texts, through the base unembedding"
    differential = True

    def __init__(self, base: Any, tokenizer: Any, windows: Sequence[Sequence[int]], words: Iterable[str], batch_size: int) -> None:
        self.windows, self.batch_size = list(windows), batch_size
        self.word_ids = single_token_ids(tokenizer, words)
        self.unembed = base.get_output_embeddings().weight.detach().double().cpu()
        self.base_mean = mean_final_hidden(base, self.windows, batch_size)
        self.tokenizer = tokenizer

    def lens(self, policy: Any) -> torch.Tensor:
        """The lens over the whole vocabulary: W_U (mean h_policy − mean h_base)."""
        return self.unembed @ (mean_final_hidden(policy, self.windows, self.batch_size) - self.base_mean)

    def per_word(self, policy: Any) -> dict[str, float]:
        scores = self.lens(policy)
        return {w: float(scores[i]) for w, i in self.word_ids.items()}

    def top_tokens(self, policy: Any, k: int = 10) -> dict[str, list[str]]:
        """The tokens the lens promotes and demotes most: what a reader would see first."""
        scores = self.lens(policy).numpy()
        order = np.argsort(scores)
        decode = self.tokenizer.decode
        return {"promoted": [decode([int(i)]).strip() for i in order[::-1][:k]],
                "demoted": [decode([int(i)]).strip() for i in order[:k]]}
