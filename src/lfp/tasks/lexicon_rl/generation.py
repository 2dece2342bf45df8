"""How often a model generates each word when sampling completions of review prefixes (Figure 4)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from lfp.core import io
from lfp.tasks.lexicon_rl import reward
from lfp.core.params import Params
from lfp.core.data import prepared_file, subsample


@torch.inference_mode()
def generated_word_counts(model: Any, tokenizer: Any, params: Params, task: str) -> Counter:
    """How often the fine-tuned model generates each (lowercased spaCy) token when sampling
    completions of a fixed, seeded set of IMDB test prefixes."""
    cfg = params.probe
    rows = io.read_jsonl(prepared_file(task, "test"), {"id": str, "text": str})
    prompts = subsample(rows, cfg.generation_prompts, params.seed, "probe-generation")
    prefixes = [tokenizer(r["text"], verbose=False)["input_ids"][: cfg.generation_prefix_tokens] for r in prompts]
    device = next(model.parameters()).device
    torch.manual_seed(params.seed)
    counts: Counter = Counter()
    pad = tokenizer.pad_token_id
    for b in range(0, len(prefixes), cfg.batch_size):
        batch = prefixes[b : b + cfg.batch_size]
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], dtype=torch.long)  # left padding
        attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], dtype=torch.long)
        gen = model.generate(
            input_ids=ids.to(device), attention_mask=attn.to(device), do_sample=True, top_k=0, top_p=1.0,
            max_new_tokens=cfg.generation_max_new_tokens, pad_token_id=pad,
        )
        for text in tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True):
            counts.update(reward.tokens(text))
    return counts
