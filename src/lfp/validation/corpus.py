"""The explanation corpus and its forward pass: which texts the explainer reads, and each text's
tokens, whole words and the selected features' SAE codes.

Why a diverse corpus (IMDB reviews + HH dialogues): the paper's appendix B notes that an IMDB-only
sample skews every explanation towards "movie reviews".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lfp.core import io, paths
from lfp.core.data import prepared_file
from lfp.core.errors import DataError
from lfp.core.params import Params
from lfp.validation.explainers import decode_tokens, normalize_word


@dataclass
class EncodedText:
    """One corpus text after the forward pass: token strings, words, and the chosen features' codes."""

    tokens: list[str]
    words: list[str]
    codes: dict[int, np.ndarray]  # layer -> [n_tokens, n_selected_features]


def load_corpus(params: Params) -> list[str]:
    """Half held-out reviews of `explain.review_task`, half held-out dialogues (prompt + chosen
    reply) of `explain.dialogue_task`, seeded: the same corpus for every task's features. An empty
    `dialogue_task` (a profile without preference tasks) makes it all reviews."""
    cfg = params.explain
    n_texts, seed = cfg.corpus_texts, params.seed
    rng = np.random.default_rng(seed)
    imdb = [row["text"] for row in io.read_jsonl(prepared_file(cfg.review_task, "test"), {"text": str})]
    hh = ([row["prompt"] + row["chosen"] for row in io.read_jsonl(prepared_file(cfg.dialogue_task, "heldout"), {"prompt": str, "chosen": str})]
          if cfg.dialogue_task else [])
    n_imdb = n_texts // 2 if cfg.dialogue_task else n_texts
    picked = []
    for rows, n in ((imdb, n_imdb), (hh, n_texts - n_imdb)):
        idx = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
        picked += [rows[i] for i in sorted(idx)]
    if not picked:
        raise DataError(f"{paths.PREPARED}: no texts for the explanation corpus")
    return picked


def token_words(text: str, offsets: list[tuple[int, int]]) -> list[str]:
    """The normalized whitespace-delimited word containing each token (BPE pieces -> whole words)."""
    words = []
    for start, end in offsets:
        if end <= start:
            words.append("")
            continue
        lo, hi = start, end
        while lo < hi and text[lo].isspace():
            lo += 1
        if lo == hi:
            words.append("")
            continue
        while lo > 0 and not text[lo - 1].isspace():
            lo -= 1
        while hi < len(text) and not text[hi].isspace():
            hi += 1
        words.append(normalize_word(text[lo:hi]))
    return words


@torch.no_grad()
def encode_corpus(
    model: Any, tokenizer: Any, saes: dict[int, Any], features: dict[int, list[int]], texts: list[str],
    max_length: int, batch_size: int, device: torch.device,
) -> list[EncodedText]:
    """One forward pass of the fine-tuned model per batch; SAE codes of the selected features only."""
    return encode_corpus_with([model], tokenizer, sorted(saes), lambda L, acts: saes[L].encode(acts[0].float())[..., features[L]],
                              texts, max_length, batch_size, device)


@torch.no_grad()
def encode_corpus_with(
    models: list[Any], tokenizer: Any, layers: list[int], encode: Callable[[int, list[torch.Tensor]], torch.Tensor], texts: list[str],
    max_length: int, batch_size: int, device: torch.device,
) -> list[EncodedText]:
    """Each batch through every model in `models` (same tokens); `encode(layer, [MLP output per model])`
    gives the codes kept, [batch, tokens, kept]: a crosscoder reads two models' activations of one token."""
    from lfp.models.loading import capture_mlp_outputs

    tokenizer.padding_side = "right"
    out: list[EncodedText] = []
    for start in tqdm(range(0, len(texts), batch_size), desc="explain corpus", leave=False):
        batch = texts[start : start + batch_size]
        enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_length, return_offsets_mapping=True)
        offsets = enc.pop("offset_mapping").tolist()
        acts = []
        for model in models:
            with capture_mlp_outputs(model, layers) as captured:
                model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device))
            acts.append(dict(captured))
        codes = {L: encode(L, [a[L] for a in acts]).cpu().numpy() for L in layers}
        lengths = enc["attention_mask"].sum(dim=1).tolist()
        for i, text in enumerate(batch):
            n = int(lengths[i])
            ids = enc["input_ids"][i, :n].tolist()
            out.append(EncodedText(
                tokens=decode_tokens(tokenizer, ids),
                words=token_words(text, [tuple(o) for o in offsets[i][:n]]),
                codes={L: codes[L][i, :n] for L in layers},
            ))
    return out
