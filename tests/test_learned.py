"""span_logprobs: the LM head runs only at the scored positions, so it must equal the plain
full-logits computation (the reference below) up to float rounding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lfp.tasks.lexicon_rl.learned import span_logprobs
from lfp.models.loading import load_model


def full_logits_reference(model, windows: list[tuple[list[int], list[int]]]) -> np.ndarray:
    out = np.full(len(windows), np.nan)
    with torch.inference_mode():
        for i, (ids, pos) in enumerate(windows):
            if pos:
                logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
                out[i] = float(sum(logp[p - 1, ids[p]] for p in pos))
    return out


def test_span_logprobs_equals_the_full_logits_computation(tiny_model_dir: Path):
    model, _ = load_model(tiny_model_dir)
    model.eval()
    rng = np.random.default_rng(0)
    windows = []
    for n in (5, 9, 3, 12, 7, 4):  # mixed lengths: batches are padded
        ids = rng.integers(1, 200, size=n).tolist()
        windows.append((ids, sorted(rng.choice(np.arange(1, n), size=min(2, n - 1), replace=False).tolist())))
    windows.append(([1, 2, 3], []))  # nothing scored -> NaN
    got = span_logprobs(model, windows, batch_size=3, pad_id=0)
    want = full_logits_reference(model, windows)
    assert np.isnan(got[-1]) and np.isnan(want[-1])
    np.testing.assert_allclose(got[:-1], want[:-1], rtol=1e-5, atol=1e-4)
