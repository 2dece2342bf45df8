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


def test_context_reader_gives_the_log_probs_and_codes_of_two_separate_passes_from_one(tiny_model_dir: Path):
    """The measure's one pass per run (lfp.tasks.lexicon_rl.context_reads) equals span_logprobs and
    element_codes run apart, window for window, with NaN where a window scores nothing."""
    from lfp.measure.probe_codes import element_codes
    from lfp.sae.model import SparseAutoencoder
    from lfp.tasks.lexicon_rl.context_reads import ContextReader

    model, _ = load_model(tiny_model_dir)
    model.eval()
    d = model.config.hidden_size
    sae = SparseAutoencoder(d, 2 * d)
    sae.reset_parameters(torch.Generator().manual_seed(0))
    rng = np.random.default_rng(1)
    windows = []
    for n in (6, 3, 10, 8, 5):
        ids = rng.integers(1, 200, size=n).tolist()
        windows.append((ids, [n - 1]))
    windows.insert(2, ([4, 5, 6], []))
    words = ["a", "b", "none", "a", "c", "b"]
    reader = ContextReader(windows, words, batch_size=2, pad=0)
    read = reader.read(model, [{1: sae}], "test")
    assert reader.kept_words == ["a", "b", "a", "c", "b"]
    assert np.isnan(read.logprobs[2])
    np.testing.assert_allclose(read.logprobs, span_logprobs(model, windows, batch_size=2, pad_id=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(read.codes[0], element_codes(model, {1: sae}, reader.kept_windows, 2, 0), rtol=1e-5, atol=1e-6)


def test_context_reader_profiles_a_word_where_it_is_predicted(tiny_model_dir: Path):
    """The `_at_prediction` lenses' profiles: each word token's position moves to the one before it
    (where its log-prob is read), the start token is never used, and a word right after the start
    token has no predicting position. The codes there are the codes of the previous token."""
    from lfp.measure.probe_codes import element_codes
    from lfp.readouts.random_dictionary import Identity
    from lfp.tasks.lexicon_rl.context_reads import ContextReader

    reader = ContextReader([([1, 5, 6, 7], [2, 3]), ([1, 9], [1]), ([1, 8, 9], []), ([1, 4, 5], [2])], ["a", "b", "c", "d"], 2, 0)
    windows, words = reader.prediction_windows()
    assert windows == [([1, 5, 6, 7], [1, 2]), ([1, 4, 5], [1])] and words == ["a", "d"]
    model, _ = load_model(tiny_model_dir)
    model.eval()
    d = model.config.hidden_size
    (codes,), read_words = reader.read_at_prediction(model, [{1: Identity(d)}], "test")
    assert read_words == words
    np.testing.assert_allclose(codes, element_codes(model, {1: Identity(d)}, windows, 2, 0), rtol=1e-6)
    np.testing.assert_allclose(codes[1], element_codes(model, {1: Identity(d)}, [([1, 4, 5], [1])], 2, 0)[0], rtol=1e-4, atol=1e-6)
