"""Readouts on synthetic models where the answer is known, and the shared control scoring."""

from __future__ import annotations

import copy

import numpy as np
import torch

from conftest import SAMPLE_TEXTS
from lfp.readouts import ReadoutRuns, readout_controls
from lfp.readouts.diff_lens import LogitDiffLens, lens_windows, single_token_ids


def _load(tiny_model_dir):
    from lfp.models.loading import load_model

    return load_model(tiny_model_dir)


def test_difference_lens_ranks_the_planted_tokens_first(tiny_model_dir) -> None:
    """A 'fine-tune' whose final hidden state is shifted toward the unembedding rows of a few words:
    the lens must put exactly those words on top, and a copy of the base must read ~0."""
    base, tok = _load(tiny_model_dir)
    words = sorted({w.strip(".,!?:").lower() for t in SAMPLE_TEXTS for w in t.split()})
    ids = single_token_ids(tok, words)
    assert len(ids) >= 5
    planted = sorted(ids)[:2]
    ft = copy.deepcopy(base)
    unembed = base.get_output_embeddings().weight.detach()
    direction = sum(unembed[ids[w]] for w in planted)
    with torch.no_grad():
        ft.gpt_neox.final_layer_norm.bias += 3.0 * direction / direction.norm()
    lens = LogitDiffLens(base, tok, lens_windows(tok, SAMPLE_TEXTS, 4, 40), words, batch_size=8)
    scores = lens.per_word(ft)
    top = sorted(scores, key=scores.get, reverse=True)[:2]
    assert set(top) == set(planted)
    same = lens.per_word(copy.deepcopy(base))
    assert max(abs(v) for v in same.values()) < 1e-9
    assert {tok.decode([ids[w]]).strip() for w in planted} <= set(lens.top_tokens(ft, k=5)["promoted"])


def test_readout_controls_score_any_per_word_readout() -> None:
    rng = np.random.default_rng(0)
    lex = {f"w{i}": float(v) for i, v in enumerate(rng.uniform(0.5, 3, 120) * rng.choice([-1, 1], 120))}
    planted = set([w for w in sorted(lex) if lex[w] > 0][:10])
    main = {w: v + rng.standard_normal() * 0.5 for w, v in lex.items()}
    plant = {w: main[w] - (2.0 if w in planted else 0.0) + rng.standard_normal() * 0.1 for w in lex}
    arms = []
    for k in range(3):
        r = np.random.default_rng(10 + k)
        rew = dict(zip(sorted(lex), r.permutation(list(lex.values()))))
        arms.append(({w: r.standard_normal() for w in lex}, rew))
    out = readout_controls("toy", ReadoutRuns(main=main, seeds={1: {w: v + rng.standard_normal() * 0.5 for w, v in lex.items()}},
                                              planted=plant, arms=arms), lex, planted, n_boot=50, n_perm=200, seed=0)
    assert out["readout_toy_tau"] > 0.4 and out["readout_toy_tau_within_sign"] > 0.2
    assert out["readout_toy_planted_paired_detected"] is True
    assert out["readout_toy_tau_vs_null_outside"] is True
    assert out["readout_toy_shuffled_learned"] is False  # these arms learned nothing: the null cannot speak
    assert "readout_toy_sign_gap" in out and out["readout_toy_n_words"] == len(lex)


def test_difference_probe_readout_reproduces_the_held_out_probe_and_reads_a_planted_shift() -> None:
    """Frozen after its fit, the readout gives the measure's difference-probe predictions on the run it
    was fitted on, and on another run it reads that run's change: a run whose codes move along the
    probe's direction for some words shows those words' predictions moved."""
    from lfp.readouts.difference_probe import DifferenceProbe
    from lfp.tasks.lexicon_rl.word_probes import heldout_probe, word_split

    rng = np.random.default_rng(0)
    vocab = np.array([f"w{i}" for i in range(40)], dtype=object)
    value = {w: float(v) for w, v in zip(vocab, rng.uniform(-3, 3, len(vocab)))}
    words = np.repeat(vocab, 4)
    direction = rng.normal(size=12)
    codes = rng.normal(size=(len(words), 12)) * 0.3 + np.outer([value[w] for w in words], direction)
    target = np.array([value[w] for w in words]) + rng.normal(scale=0.1, size=len(words))
    values = np.array([value[w] for w in words])
    is_test = word_split(words, 0.3, 0)
    offsets, widths = [0, 6], [6, 6]
    reference = heldout_probe(codes, target, words, values, is_test, offsets, widths, 1.0).scores
    readout = DifferenceProbe(codes, target, words, is_test, offsets, widths, 1.0, base_codes=np.zeros_like(codes))
    main = readout.from_difference(codes)
    assert sorted(main) == sorted(reference.words)
    assert np.allclose([main[w] for w in reference.words], reference.predicted)
    moved_word = reference.words[0]
    shifted = codes - np.outer(words == moved_word, direction) * 5.0  # this run pushed one word's codes down
    after = readout.from_difference(shifted)
    assert after[moved_word] < main[moved_word] - 1.0
    assert all(np.isclose(after[w], main[w]) for w in main if w != moved_word)


def _word_windows(tok, words):
    windows, ctx_words = [], []
    for w in words:
        for text in SAMPLE_TEXTS[:3]:
            ids = tok.encode(text + " " + w, add_special_tokens=False)[-12:]
            windows.append((ids, [len(ids) - 1]))
            ctx_words.append(w)
    return windows, ctx_words


def _shifted_copy(base, layer, direction):
    from lfp.models.loading import mlp_module

    ft = copy.deepcopy(base)
    mlp_module(ft, layer).register_forward_hook(lambda _m, _i, out: out + direction)
    return ft


def test_sae_lens_reads_a_shift_along_one_latent_and_the_words_that_use_it(tiny_model_dir) -> None:
    """A 'fine-tune' whose layer-1 MLP output is shifted along one latent's decoder direction: the SAE
    lens names exactly that latent first, a copy of the base reads ~0, and the per-word score is the
    word's own use of the shifted latent (profiles mixed through the decoder's cosines)."""
    from lfp.measure.probe_codes import element_codes
    from lfp.readouts.sae_lens import LensMeans, sae_diff_lens
    from lfp.sae.model import SparseAutoencoder

    base, tok = _load(tiny_model_dir)
    d = base.config.hidden_size
    sae = SparseAutoencoder(d, 2 * d)
    sae.reset_parameters(torch.Generator().manual_seed(0))
    windows, ctx_words = _word_windows(tok, ["movie", "great", "plot"])
    means = LensMeans(base, [1], lens_windows(tok, SAMPLE_TEXTS, 4, 40), batch_size=4)
    lens = sae_diff_lens(means, {1: sae}, element_codes(base, {1: sae}, windows, 4, 0), ctx_words)
    assert lens.name == "sae_diff_lens"
    assert max(abs(v) for v in lens.per_word(copy.deepcopy(base)).values()) < 1e-9
    j = 5
    ft = _shifted_copy(base, 1, 2.0 * lens.directions[0][j].float())
    assert lens.top_latents(ft, k=3)["positive"][0] == f"L1:{j}"
    shifts = lens.shifts(ft)
    np.testing.assert_allclose(shifts[j], 2.0, rtol=1e-4)
    scores = lens.per_word(ft)
    for w in ["movie", "great", "plot"]:
        assert abs(scores[w] - float(lens.profiles[w] @ shifts)) < 1e-9 and abs(lens.profiles[w].sum() - 1.0) < 1e-9


def test_crosscoder_lens_names_the_shifted_latent_with_its_nu_and_shares_one_forward_pass(tiny_model_dir) -> None:
    """The same planted shift along one crosscoder latent's fine-tuned decoder direction: the crosscoder
    lens names that latent first and reports its ν beside it; the SAE lens on the same `LensMeans`
    reads the same policy without a second forward pass; a copy of the base reads ~0."""
    from lfp.measure.probe_codes import element_codes_sets
    from lfp.readouts.crosscoder import Crosscoder
    from lfp.readouts.random_dictionary import Identity
    from lfp.readouts.sae_lens import LensMeans, crosscoder_diff_lens, sae_diff_lens
    from lfp.sae.model import SparseAutoencoder

    base, tok = _load(tiny_model_dir)
    d = base.config.hidden_size
    sae = SparseAutoencoder(d, 2 * d)
    sae.reset_parameters(torch.Generator().manual_seed(0))
    cc = Crosscoder(d, 3 * d, 4, torch.Generator().manual_seed(1)).eval()
    nu = np.linspace(-0.5, 1.5, 3 * d)
    windows, ctx_words = _word_windows(tok, ["movie", "great", "plot"])
    codes, raw = element_codes_sets(base, [{1: sae}, {1: Identity(d)}], windows, 4, 0)
    means = LensMeans(base, [1], lens_windows(tok, SAMPLE_TEXTS, 4, 40), batch_size=4)
    sae_lens = sae_diff_lens(means, {1: sae}, codes, ctx_words)
    lens = crosscoder_diff_lens(means, [(cc, np.array([2.0, 3.0]), nu)], raw, ctx_words)
    assert lens.name == "crosscoder_diff_lens" and lens.widths == [3 * d]
    assert max(abs(v) for v in lens.per_word(copy.deepcopy(base)).values()) < 1e-9
    j = 7
    ft = _shifted_copy(base, 1, 2.0 * lens.directions[0][j].float())
    calls = []
    ft.base_model.register_forward_hook(lambda *_: calls.append(1))
    top = lens.top_latents(ft, k=3)
    assert top["positive"][0] == f"L1:{j}" and top["positive_nu"][0] == round(float(nu[j]), 3)
    np.testing.assert_allclose(lens.shifts(ft)[j], 2.0, rtol=1e-4)
    n_forward = len(calls)
    sae_lens.per_word(ft)
    assert len(calls) == n_forward  # the second lens read the first one's forward pass
    for p in lens.profiles.values():
        assert p.sum() == 0.0 or abs(p.sum() - 1.0) < 1e-9


def test_sae_lens_profiles_sum_to_one_per_layer_and_leave_silent_layers_at_zero() -> None:
    from lfp.readouts.sae_lens import word_profiles

    codes = np.array([[1.0, 3.0, 0.0, 0.0], [3.0, 1.0, 0.0, 0.0], [0.0, 2.0, 1.0, 1.0]])
    p = word_profiles(codes, ["a", "a", "b"], [2, 2])
    np.testing.assert_allclose(p["a"], [0.5, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(p["b"], [0.0, 1.0, 0.5, 0.5])
