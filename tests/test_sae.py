"""The sparse autoencoder: fast loop == autograd reference, learns planted structure, dictionary
matching, and the sae stage's outputs (the file format: tests/test_sae_files.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lfp.core import io, paths
from lfp.sae import (
    SaeTraining,
    SparseAutoencoder,
    dictionary_matching,
    load_sae,
    reconstruction_metrics,
    train_sae,
    train_sae_reference,
    train_saes,
)
from conftest import planted_sae_rows as planted
from lfp.sae import gemm
from lfp.sae.step import GradientStep


@pytest.mark.parametrize("tied", [True, False])
def test_fast_loop_matches_autograd_reference(tied: bool) -> None:
    x = planted(1000)
    kw = dict(l1=1e-3, lr=1e-3, batch_size=32, epochs=2, seed=3, tied=tied, max_rows=900)
    fast, stats = train_sae(x, 48, SaeTraining(**kw))
    ref = train_sae_reference(x, 48, SaeTraining(**kw))
    assert stats["rows"] == 900 and stats["steps"] == 2 * 29  # last batch of each epoch is partial
    for (name, a), (_, b) in zip(fast.state_dict().items(), ref.state_dict().items()):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4, msg=name)
    assert (fast.decoder_weight is None) == tied


def test_parallel_training_equals_one_at_a_time() -> None:
    data = {s: planted(400, seed=s) for s in (0, 1)}
    kw = dict(l1=1e-3, lr=1e-3, batch_size=32, epochs=1, seed=0)
    jobs = [(lambda s=s: data[s], h) for s in (0, 1) for h in (32, 64)]
    together = train_saes(jobs, SaeTraining(**kw), workers=2)
    for (load, h), (sae, stats) in zip(jobs, together):
        alone, _ = train_sae(load(), h, SaeTraining(**kw), threads=1)
        assert sae.d_hidden == h and stats["rows"] == 400
        assert all(torch.equal(a, b) for a, b in zip(sae.state_dict().values(), alone.state_dict().values()))


@pytest.fixture(params=["onednn", "mm"])
def gemm_backend(request, monkeypatch) -> str:
    """Force GradientStep's GEMM path: oneDNN for any size (LFP_SAE_GEMM), or torch.mm (MKL) only."""
    if request.param == "onednn":
        if gemm.ONEDNN_LINEAR is None:
            pytest.skip("torch built without oneDNN")
        monkeypatch.setenv("LFP_SAE_GEMM", "onednn")
    else:
        monkeypatch.setattr(gemm, "ONEDNN_LINEAR", None)
    return request.param


@pytest.mark.parametrize("tied", [True, False])
def test_both_gemm_paths_match_autograd_reference(gemm_backend: str, tied: bool) -> None:
    assert (GradientStep(SparseAutoencoder(32, 48, tied=tied), 1e-3).linear is not None) == (gemm_backend == "onednn")
    x = planted(1000)
    kw = dict(l1=1e-3, lr=1e-3, batch_size=32, epochs=2, seed=3, tied=tied, max_rows=900)
    fast, stats = train_sae(x, 48, SaeTraining(**kw))
    ref = train_sae_reference(x, 48, SaeTraining(**kw))
    assert stats["steps"] == 2 * 29
    for (name, a), (_, b) in zip(fast.state_dict().items(), ref.state_dict().items()):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4, msg=name)
    assert np.allclose(np.linalg.norm(fast.encoder_weight.detach().numpy(), axis=1), 1.0, atol=1e-6)


def test_parallel_training_equals_one_at_a_time_on_both_gemm_paths(gemm_backend: str) -> None:
    data = {s: planted(300, seed=s) for s in (0, 1)}
    kw = dict(l1=1e-3, lr=1e-3, batch_size=32, epochs=1, seed=0)
    jobs = [(lambda s=s: data[s], h) for s in (0, 1) for h in (32, 64)]
    for workers in (1, 2):
        for (load, h), (sae, _) in zip(jobs, train_saes(jobs, SaeTraining(**kw), workers=workers)):
            alone, _ = train_sae(load(), h, SaeTraining(**kw), threads=1)
            assert all(torch.equal(a, b) for a, b in zip(sae.state_dict().values(), alone.state_dict().values()))


def test_small_saes_keep_mkl_without_measuring(monkeypatch, tmp_path) -> None:
    """The default profile's SAEs (d_in·d_hidden ≤ ONEDNN_MIN_WEIGHTS) always run MKL, as before."""
    from lfp.sae import backend

    monkeypatch.setenv("LFP_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LFP_SAE_GEMM", raising=False)
    monkeypatch.setattr(backend, "measure", lambda *a, **k: pytest.fail("measured a small SAE"))
    for d, h in ((32, 48), (64, 64), (64, 128), (128, 256)):
        step = GradientStep(SparseAutoencoder(d, h), 1e-3)
        assert step.linear is None and step.backend == "mkl"
    assert not (tmp_path / backend.CACHE_NAME).exists()


def test_training_normalisation_matches_normalize_rows() -> None:
    from lfp.sae import normalize_rows_
    from lfp.sae.norms import normalize_rows_with_

    w = torch.randn(50, 20, generator=torch.Generator().manual_seed(0)) * 3.0
    w[7] = 0.0
    expected = w.clone()
    normalize_rows_(expected)
    normalize_rows_with_(w, torch.empty(50, 1))
    torch.testing.assert_close(w, expected, atol=0, rtol=2.5e-7)  # within one rounding of the division
    assert torch.equal(w[7], torch.zeros(20))


def test_training_learns_planted_sparse_structure() -> None:
    x = planted(4000)
    held = x[-500:]
    sae, stats = train_sae(x[:-500], 64, SaeTraining(l1=1e-3, lr=3e-3, batch_size=32, epochs=3, seed=0))
    before = SparseAutoencoder(32, 64)
    before.reset_parameters(torch.Generator().manual_seed(0))
    q0, q = reconstruction_metrics(before, held), reconstruction_metrics(sae, held)
    assert stats["final_loss"] < 0.5 * stats["first_loss"]
    assert stats["epoch_loss"][-1] < stats["epoch_loss"][0]
    assert q["fvu"] < 0.25 < q0["fvu"]
    assert q["l0"] < 32  # sparse: fewer active codes than input dimensions
    assert np.allclose(np.linalg.norm(sae.encoder_weight.detach().numpy(), axis=1), 1.0, atol=1e-5)


def test_reconstruction_metrics_formulas() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    sae = SparseAutoencoder(8, 16)
    sae.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.encoder_bias[:4] = -100.0  # four features can never fire
        x_hat, codes = sae(torch.from_numpy(x))
    x_hat, codes = x_hat.numpy().astype(np.float64), codes.numpy()
    q = reconstruction_metrics(sae, x)
    err = ((x - x_hat) ** 2).sum()
    assert q["mse"] == pytest.approx(err / x.size, rel=1e-6)
    assert q["fvu"] == pytest.approx(err / ((x - x.mean(0)) ** 2).sum(), rel=1e-6)
    assert q["l0"] == pytest.approx((codes > 0).sum(1).mean())
    assert q["dead_fraction"] == pytest.approx((~(codes > 0).any(0)).mean()) and q["dead_fraction"] >= 0.25


def test_matching_of_permuted_copy_recovers_permutation() -> None:
    rng = np.random.default_rng(0)
    small = torch.from_numpy(rng.standard_normal((20, 16)))
    perm = rng.permutation(40)
    large = torch.cat([small, torch.from_numpy(rng.standard_normal((20, 16)))])[perm] * 3.0  # scale-free
    m = dictionary_matching(small, large)
    assert m["mmcs"] == pytest.approx(1.0) and m["hungarian_mean_cos"] == pytest.approx(1.0)
    inverse = np.argsort(perm)
    assert m["hungarian"] == [[i, int(inverse[i])] for i in range(20)]
    assert sorted(m["ranked_features"]) == list(range(20)) and len(m["max_cos"]) == 20
    # a worse-matched feature ranks last
    noisy = small.clone()
    noisy[7] = torch.from_numpy(rng.standard_normal(16))
    m2 = dictionary_matching(noisy, large)
    assert m2["ranked_features"][-1] == 7 and m2["mmcs"] < 1.0


def test_small_and_large_dictionaries_start_independent() -> None:
    """Untrained (lr ~ 0) n and 2n dictionaries must not match: shared init would fake MMCS ≈ 1."""
    x = planted(64)
    kw = dict(l1=1e-3, lr=1e-12, batch_size=32, epochs=1, seed=0)
    small, _ = train_sae(x, 32, SaeTraining(**kw))
    large, _ = train_sae(x, 64, SaeTraining(**kw))
    assert dictionary_matching(small.dictionary(), large.dictionary())["mmcs"] < 0.8


def test_sae_stage_end_to_end(tiny_model_dir: Path, in_tmp_project: Path, micro_params) -> None:
    from lfp.sae import read_sae_config
    from lfp.stages import activations
    from lfp.stages import sae as stage

    texts = ["This movie was great and I loved the acting.", "The film was terrible, boring and long.",
             "An okay story with a good cast but a weak ending.", "What a wonderful, beautiful and happy film!"]
    train = in_tmp_project / "data/prepared/vader/train.jsonl"
    train.parent.mkdir(parents=True)
    train.write_text("".join(json.dumps({"id": f"imdb-train-{i:06d}", "text": f"{texts[i % 4]} Take {i}.", "label": 1}) + "\n" for i in range(60)))
    shutil.copytree(tiny_model_dir, in_tmp_project / "models/finetuned/tiny-vader")
    layers = [2, 5]
    io.write_json(in_tmp_project / paths.report_dir("tiny", "vader") / "divergence.json", {"chosen_layers": layers})
    activations.run(micro_params, "tiny", "vader")
    stage.run(micro_params, "tiny", "vader")

    for L in layers:
        for r in (1, 2):
            s = load_sae(paths.sae_path("tiny", "vader", L, r))
            assert (s.d_in, s.d_hidden, s.tied, s.architecture) == (32, 32 * r, True, "relu_l1")
            meta = read_sae_config(paths.sae_path("tiny", "vader", L, r))["lfp_meta"]
            assert (meta["layer"], meta["ratio"], meta["model"], meta["task"]) == (L, r, "tiny", "vader")
    matching = io.read_json(paths.matching_file("tiny", "vader"))
    assert sorted(matching["layers"]) == ["2", "5"]
    entry = matching["layers"]["5"]
    assert len(entry["max_cos"]) == 32 and sorted(entry["ranked_features"]) == list(range(32))
    assert 0 < entry["mmcs"] <= 1 and len(entry["hungarian"]) == 32
    metrics = io.read_json(paths.sae_metrics_file("tiny", "vader"))
    for L in layers:
        for r in (1, 2):
            for k in ("mse", "fvu", "l0", "dead_fraction", "ce_clean", "ce_recon", "ce_zero", "ce_recovered"):
                assert f"layer{L}_x{r}_{k}" in metrics
        assert metrics[f"layer{L}_mmcs"] == pytest.approx(matching["layers"][str(L)]["mmcs"])
    assert metrics["train_rows"] + metrics["heldout_rows"] == io.read_json(paths.activations_dir("tiny", "vader") / "index.json")["n_rows"]
    assert metrics["table11_x1_sparsity"] == pytest.approx(metrics["mean_x1_l0"] / 100)

    import mlflow

    runs = mlflow.search_runs(experiment_names=[micro_params.tracking.experiment], output_format="list")
    (run,) = [r for r in runs if r.info.run_name.startswith("sae@tiny-vader")]  # "-{source}" may follow
    assert run.data.metrics["layer5_x2_fvu"] == pytest.approx(metrics["layer5_x2_fvu"])
    assert run.data.tags["tied"] == "True"


def test_heldout_split_is_by_text_and_skips_empty_texts() -> None:
    from lfp.stages.sae import heldout_texts, split_rows

    offsets = np.array([0, 3, 3, 7, 8, 12, 15])  # text 1 is empty
    held = heldout_texts(offsets, 0.4, seed=0)
    assert len(held) == 2 and 1 not in held
    train, test = split_rows(offsets, held)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(15))
    owner = np.searchsorted(offsets, np.arange(15), side="right") - 1
    assert set(owner[test]) == set(held.tolist()) and not set(owner[train]) & set(held.tolist())
