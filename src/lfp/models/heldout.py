"""Held-out next-token loss on packed blocks: how every base model (trained here or loaded) is
scored on the same held-out reviews, so one that did not load or did not learn is visible before
fine-tuning."""

from __future__ import annotations

import itertools
from typing import Any

import torch

from lfp.core.errors import DataError


def token_stream(tokenizer: Any, texts: list[str]) -> list[int]:
    """All texts' token ids, each followed by eos (the document separator of packed training)."""
    eos = tokenizer.eos_token_id
    ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    return list(itertools.chain.from_iterable([*seq, eos] for seq in ids))


def pack(stream: list[int], block: int, *, keep_tail: bool, lead: list[int] | None = None) -> list[torch.Tensor]:
    """Cut a token stream into `block`-long rows, each starting with `lead` (a model's `<bos>`, which
    Gemma needs at the start of every row; none for tiny/SmolLM2); the shorter tail is kept only for
    evaluation (so every held-out token is scored) and dropped for training (equal-shape batches)."""
    lead = lead or []
    body = block - len(lead)
    n_full = len(stream) // body
    rows = [torch.tensor(lead + stream[i * body : (i + 1) * body]) for i in range(n_full)]
    tail = stream[n_full * body :]
    if keep_tail and len(tail) >= 2:
        rows.append(torch.tensor(lead + tail))
    return rows


@torch.inference_mode()
def heldout_loss(model: Any, blocks: list[torch.Tensor], batch_size: int, device: torch.device) -> float:
    """Mean next-token cross-entropy (nats) over every predicted held-out token."""
    model.eval()
    total, count = 0.0, 0
    for length, group in itertools.groupby(blocks, key=len):
        rows = list(group)
        for i in range(0, len(rows), batch_size):
            batch = torch.stack(rows[i : i + batch_size]).to(device)
            loss = model(input_ids=batch, labels=batch).loss
            n_pred = batch.shape[0] * (length - 1)
            total += float(loss) * n_pred
            count += n_pred
    if count == 0:
        raise DataError("held-out texts gave no tokens to score")
    return total / count

