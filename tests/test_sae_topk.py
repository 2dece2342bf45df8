"""TopK SAEs (Gao et al. 2024) beside the paper's relu_l1: the fast loop == the autograd reference
(with and without the dead-latent auxiliary loss), determinism, learning, SAELens-style files,
the measured GEMM-backend choice, and the L0 histogram / dead counts of the quality metrics."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lfp.core.errors import ArtifactError
from lfp.sae import (
    CFG_FILENAME,
    SaeTraining,
    SparseAutoencoder,
    backend,
    load_sae,
    read_sae_config,
    reconstruction_metrics,
    save_sae,
    train_sae,
    train_sae_reference,
    train_saes,
)
from conftest import planted_sae_rows as planted
from lfp.sae import gemm as sae_gemm
from lfp.sae.architectures.topk import DeadLatents, topk_aux_loss, topk_relu
from lfp.sae.quality import l0_edges
from lfp.sae.step import GradientStep


@pytest.fixture(autouse=True)
def private_gemm_cache(tmp_path, monkeypatch) -> Path:
    """Never write the per-machine backend cache into the real home; no forced backend."""
    monkeypatch.setenv("LFP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LFP_SAE_GEMM", raising=False)
    backend.clear_memo()
    yield tmp_path / "cache" / backend.CACHE_NAME
    backend.clear_memo()


needs_onednn_here = pytest.mark.skipif(sae_gemm.ONEDNN_LINEAR is None, reason="torch built without oneDNN")


def topk_kw(**kw):
    return dict({"l1": 0.0, "lr": 1e-3, "batch_size": 32, "epochs": 2, "seed": 3, "max_rows": 900, "architecture": "topk", "k": 4}, **kw)


def same_weights(a: SparseAutoencoder, b: SparseAutoencoder) -> bool:
    return list(a.state_dict()) == list(b.state_dict()) and all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ------------------------------------------------------------------------------------ model


def test_topk_codes_keep_the_k_largest_after_relu() -> None:
    sae = SparseAutoencoder(16, 40, tied=False, architecture="topk", k=5)
    sae.reset_parameters(torch.Generator().manual_seed(0))
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    pre = sae.pre_activations(x)
    codes = sae.encode(x)
    assert ((codes > 0).sum(1) <= 5).all() and (codes >= 0).all()
    expected = torch.zeros_like(pre)
    for i in range(len(pre)):
        top = pre[i].argsort(descending=True)[:5]
        expected[i, top] = pre[i, top].clamp_min(0)
    assert torch.equal(codes, expected)
    # relu first, then top-k: the same codes
    assert torch.equal(topk_relu(pre, 5), topk_relu(pre.relu(), 5))
    assert sae.dictionary().shape == (40, 16)
    assert torch.allclose(sae.dictionary().norm(dim=1), torch.ones(40), atol=1e-6)  # unit decoder directions
    assert torch.equal(sae.encoder_weight, sae.decoder_weight.t())  # encoder starts as the decoder's transpose


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"architecture": "topk"}, "topk needs 1 <= k <= d_hidden"),
    ({"architecture": "topk", "k": 0}, "topk needs 1 <= k"),
    ({"architecture": "topk", "k": 41}, "topk needs 1 <= k"),
    ({"k": 4}, "k is a topk setting"),
    ({"architecture": "jumprelu"}, "unknown architecture"),
])
def test_bad_architecture_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SparseAutoencoder(16, 40, **kwargs)


def test_params_schema_names_exactly_the_registered_architectures() -> None:
    """A new architecture is its module + a registry line + its name in the params literal: the
    schema (lfp.core, which may not import lfp.sae) and the registry must not drift apart."""
    import dataclasses
    import typing

    from lfp.core.sections import Sae
    from lfp.sae import ARCHITECTURES, PAPER_METHOD

    field = {f.name: f for f in dataclasses.fields(Sae)}["architecture"]
    assert set(typing.get_args(typing.get_type_hints(Sae)["architecture"])) == set(ARCHITECTURES)
    assert field.default == PAPER_METHOD


def test_relu_l1_is_the_default_paper_method_and_topk_ignores_l1() -> None:
    x = planted(200)
    sae, _ = train_sae(x, 32, SaeTraining(l1=1e-3, lr=1e-3, batch_size=32, epochs=1, seed=0))
    assert (sae.architecture, sae.tied, sae.k) == ("relu_l1", True, None)
    topk, _ = train_sae(x, 32, SaeTraining(**topk_kw(epochs=1)))
    assert (topk.architecture, topk.tied, topk.k) == ("topk", False, 4)  # untied unless asked
    ignored, _ = train_sae(x, 32, SaeTraining(**topk_kw(epochs=1, l1=1e-3)))  # l1 is a relu_l1 setting
    assert same_weights(ignored, topk)


def test_aux_loss_formula_and_dead_latent_tracking() -> None:
    sae = SparseAutoencoder(8, 20, tied=False, architecture="topk", k=2)
    sae.reset_parameters(torch.Generator().manual_seed(0))
    x = torch.randn(10, 8, generator=torch.Generator().manual_seed(1))
    pre = sae.pre_activations(x)
    x_hat = sae.decode(sae.activate(pre))
    dead = torch.zeros(20, dtype=torch.bool)
    assert float(topk_aux_loss(sae, x, x_hat, pre, dead)) == 0.0
    dead[[1, 4, 7]] = True  # 3 dead < k_aux = d_in // 2 = 4: k_aux 3, scale 3/4
    codes = torch.zeros_like(pre)
    codes[:, [1, 4, 7]] = pre[:, [1, 4, 7]].relu()
    expected = 0.75 * ((codes @ sae.dictionary() - (x - x_hat)) ** 2).mean()
    torch.testing.assert_close(topk_aux_loss(sae, x, x_hat, pre, dead), expected)
    tracker = DeadLatents(4, window=5)
    assert tracker.mask().tolist() == [False] * 4
    tracker.update(torch.tensor([[1.0, 0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 0]]))  # 3 rows
    tracker.update(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]]))  # 2 rows
    assert tracker.rows_since.tolist() == [0, 5, 2, 5] and tracker.mask().tolist() == [False, True, False, True]


# ------------------------------------------------------------------------------------ training


@pytest.fixture(params=["mkl", "onednn"])
def gemm(request, monkeypatch) -> str:
    """Force GradientStep's GEMM path for the test (LFP_SAE_GEMM)."""
    if request.param == "onednn" and sae_gemm.ONEDNN_LINEAR is None:
        pytest.skip("torch built without oneDNN")
    monkeypatch.setenv("LFP_SAE_GEMM", request.param)
    return request.param


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize(("aux_coeff", "dead_window"), [(0.0, 10_000), (1.0 / 32, 64), (1.0, 32)])
def test_fast_topk_loop_matches_autograd_reference(gemm: str, tied: bool, aux_coeff: float, dead_window: int) -> None:
    x = planted(1000)
    kw = topk_kw(tied=tied, aux_coeff=aux_coeff, dead_window=dead_window)
    fast, stats = train_sae(x, 48, SaeTraining(**kw))
    ref = train_sae_reference(x, 48, SaeTraining(**kw))
    assert stats["steps"] == 2 * 29 and stats["backend"] == gemm
    assert (fast.decoder_weight is None) == tied and (fast.architecture, fast.k) == ("topk", 4)
    for (name, a), (_, b) in zip(fast.state_dict().items(), ref.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4, msg=name)
    assert torch.allclose(fast.dictionary().norm(dim=1), torch.ones(48), atol=1e-5)
    if aux_coeff:
        assert "dead_fraction_train" in stats
        # the auxiliary loss took part: without it the weights differ
        plain, _ = train_sae(x, 48, SaeTraining(**dict(kw, aux_coeff=0.0)))
        assert not same_weights(plain, fast)


@needs_onednn_here
def test_topk_backends_agree_to_rounding(monkeypatch) -> None:
    x = planted(600)
    kw = topk_kw(aux_coeff=1.0, dead_window=64)
    monkeypatch.setenv("LFP_SAE_GEMM", "mkl")
    mkl, _ = train_sae(x, 48, SaeTraining(**kw))
    monkeypatch.setenv("LFP_SAE_GEMM", "onednn")
    onednn, stats = train_sae(x, 48, SaeTraining(**kw))
    assert stats["backend"] == "onednn"
    for (name, a), (_, b) in zip(mkl.state_dict().items(), onednn.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4, msg=name)


def test_topk_training_is_deterministic_and_parallel_equals_alone() -> None:
    x = planted(600)
    a, _ = train_sae(x, 48, SaeTraining(**topk_kw(aux_coeff=1.0, dead_window=64)))
    b, _ = train_sae(x, 48, SaeTraining(**topk_kw(aux_coeff=1.0, dead_window=64)))
    assert same_weights(a, b)
    data = {s: planted(300, seed=s) for s in (0, 1)}
    kw = {"l1": 0.0, "lr": 1e-3, "batch_size": 32, "epochs": 1, "seed": 0, "architecture": "topk", "k": 6, "aux_coeff": 1.0, "dead_window": 64}
    jobs = [(lambda s=s: data[s], h) for s in (0, 1) for h in (32, 64)]
    for (load, h), (sae, _) in zip(jobs, train_saes(jobs, SaeTraining(**kw), workers=2)):
        alone, _ = train_sae(load(), h, SaeTraining(**kw), threads=1)
        assert sae.k == 6 and same_weights(sae, alone)


def test_topk_learns_planted_structure_sparser_and_better_than_untrained() -> None:
    x = planted(4000)
    held = x[-500:]
    sae, stats = train_sae(x[:-500], 64, SaeTraining(**topk_kw(k=8, lr=3e-3, epochs=3, max_rows=None)))
    before = SparseAutoencoder(32, 64, tied=False, architecture="topk", k=8)
    before.reset_parameters(torch.Generator().manual_seed(0))
    q0, q = reconstruction_metrics(before, held), reconstruction_metrics(sae, held)
    assert stats["final_loss"] < 0.5 * stats["first_loss"]
    assert q["fvu"] < 0.25 < q0["fvu"]
    assert q["l0"] <= 8
    assert sum(q["l0_histogram"]["counts"]) == 500


# ------------------------------------------------------------------------------------ files


def trained_topk(tied: bool = False) -> SparseAutoencoder:
    return train_sae(planted(300, d=16), 40, SaeTraining(**topk_kw(tied=tied, k=5, epochs=1, aux_coeff=1.0, dead_window=64)))[0]


@pytest.mark.parametrize("tied", [False, True])
def test_topk_round_trip_and_saelens_fields(tmp_path: Path, tied: bool) -> None:
    sae = trained_topk(tied)
    save_sae(sae, tmp_path / "s", {"layer": 1})
    cfg = json.loads((tmp_path / "s" / CFG_FILENAME).read_text())
    assert {k: cfg[k] for k in ("architecture", "lfp_architecture", "k", "rescale_acts_by_decoder_norm", "apply_b_dec_to_input",
                                "normalize_activations", "dtype", "d_in", "d_sae", "tied")} == {
        "architecture": "topk", "lfp_architecture": "topk", "k": 5, "rescale_acts_by_decoder_norm": False,
        "apply_b_dec_to_input": False, "normalize_activations": "none", "dtype": "float32", "d_in": 16, "d_sae": 40,
        "tied": tied}
    back = load_sae(tmp_path / "s")
    assert (back.architecture, back.k, back.tied, back.training) == ("topk", 5, tied, False)
    assert same_weights(sae, back)
    x = torch.from_numpy(planted(50, d=16, seed=9))
    assert torch.equal(sae.encode(x), back.encode(x)) and torch.equal(sae(x)[0], back(x)[0])


@pytest.mark.parametrize(("value", "shown"), [(None, "'<missing>'"), (0, "0"), (41, "41"), ("5", "'5'"), (True, "True")])
def test_topk_file_with_bad_k_is_refused(tmp_path: Path, value, shown: str) -> None:
    save_sae(trained_topk(), tmp_path / "s", {})
    path = tmp_path / "s" / CFG_FILENAME
    cfg = json.loads(path.read_text())
    if value is None:
        del cfg["k"]
    else:
        cfg["k"] = value
    path.write_text(json.dumps(cfg))
    for read in (read_sae_config, load_sae):
        with pytest.raises(ArtifactError) as err:
            read(tmp_path / "s")
        assert str(err.value) == f"{path}: field 'k' must be an integer in 1..d_sae=40 for lfp_architecture 'topk', got {shown}"


def test_topk_file_claiming_rescaling_is_refused(tmp_path: Path) -> None:
    save_sae(trained_topk(), tmp_path / "s", {})
    path = tmp_path / "s" / CFG_FILENAME
    cfg = json.loads(path.read_text())
    cfg["rescale_acts_by_decoder_norm"] = True
    path.write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="field 'rescale_acts_by_decoder_norm' must be False"):
        load_sae(tmp_path / "s")


def test_saelens_loads_topk_with_the_same_codes(tmp_path: Path) -> None:
    sae_lens = pytest.importorskip("sae_lens")
    for tied in (False, True):
        sae = trained_topk(tied)
        save_sae(sae, tmp_path / f"s{tied}", {"layer": 1})
        theirs = sae_lens.SAE.load_from_disk(str(tmp_path / f"s{tied}"), device="cpu")
        assert type(theirs).__name__ == "TopKSAE" and theirs.cfg.k == 5
        x = torch.from_numpy(planted(50, d=16, seed=9))
        with torch.no_grad():
            torch.testing.assert_close(theirs.encode(x), sae.encode(x), atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(theirs.decode(theirs.encode(x)), sae(x)[0], atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------ GEMM backend


needs_onednn = pytest.mark.skipif(sae_gemm.ONEDNN_LINEAR is None, reason="torch built without oneDNN")


@needs_onednn
def test_large_sae_backend_is_measured_once_per_machine_and_cached(private_gemm_cache: Path, monkeypatch) -> None:
    calls = []

    def fake_measure(sae, batch_size, backends, seconds=backend.MEASURE_SECONDS):
        calls.append((sae.d_in, sae.d_hidden, batch_size, backends))
        return {"backend": "onednn", "mkl_us": 2.0, "onednn_us": 1.0, "measured_at": "now"}

    monkeypatch.setattr(backend, "measure", fake_measure)
    large = SparseAutoencoder(256, 512)
    assert GradientStep(large, 1e-3).backend == "onednn"
    assert GradientStep(large, 1e-3).backend == "onednn"  # in-process memo
    assert calls == [(256, 512, 32, ("mkl", "onednn"))]
    data = json.loads(private_gemm_cache.read_text())
    entry = data["machines"][backend.machine_key()][backend.shape_key(large, 32, torch.get_num_threads())]
    assert entry["backend"] == "onednn"
    # a new process reads the file instead of measuring again (a choice that never flips)
    backend.clear_memo()
    monkeypatch.setattr(backend, "measure", lambda *a, **k: pytest.fail("measured again"))
    assert backend.choose_backend(large, 32) == "onednn"
    # another shape or batch size is its own entry; LFP_SAE_GEMM overrides everything
    monkeypatch.setenv("LFP_SAE_GEMM", "mkl")
    assert GradientStep(large, 1e-3).backend == "mkl"
    monkeypatch.setenv("LFP_SAE_GEMM", "onednn")
    assert GradientStep(SparseAutoencoder(8, 8), 1e-3).backend == "onednn"


@needs_onednn
def test_real_measurement_returns_both_timings(private_gemm_cache: Path) -> None:
    result = backend.measure(SparseAutoencoder(128, 512), 32, ("mkl", "onednn"), seconds=0.05)
    assert result["backend"] in ("mkl", "onednn") and result["mkl_us"] > 0 and result["onednn_us"] > 0
    assert result[f"{result['backend']}_us"] == min(result["mkl_us"], result["onednn_us"])


def test_unwritable_cache_keeps_the_choice_in_process(monkeypatch, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("LFP_CACHE_DIR", str(blocker))
    monkeypatch.setattr(sae_gemm, "backends_for", lambda sae: ("mkl", "onednn"))
    monkeypatch.setattr(backend, "measure", lambda *a, **k: {"backend": "mkl", "mkl_us": 1.0, "onednn_us": 2.0})
    assert backend.choose_backend(SparseAutoencoder(256, 512), 32) == "mkl"


def test_forcing_an_unavailable_backend_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(sae_gemm, "ONEDNN_LINEAR", None)
    sae = SparseAutoencoder(256, 512, tied=False, architecture="topk", k=16)
    assert GradientStep(sae).backend == "mkl"
    with pytest.raises(ValueError, match="backend 'onednn' is not available for a topk SAE"):
        GradientStep(sae, backend="onednn")
    monkeypatch.setenv("LFP_SAE_GEMM", "onednn")  # falls back, with a warning
    assert GradientStep(sae).backend == "mkl"


# ------------------------------------------------------------------------------------ quality


def test_l0_histogram_and_dead_count() -> None:
    assert l0_edges(64) == [0, 1, 2, 4, 8, 16, 32, 64, 65] and l0_edges(1) == [0, 1, 2]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    sae = SparseAutoencoder(8, 16)
    sae.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.encoder_bias[:3] = -100.0  # three features can never fire
        codes = sae.encode(torch.from_numpy(x)).numpy()
    q = reconstruction_metrics(sae, x)
    per_row = (codes > 0).sum(1)
    edges = q["l0_histogram"]["edges"]
    assert edges == l0_edges(16)
    assert q["l0_histogram"]["counts"] == [int(((per_row >= lo) & (per_row < hi)).sum()) for lo, hi in itertools.pairwise(edges)]
    assert q["dead_count"] == int((~(codes > 0).any(0)).sum()) >= 3
    assert q["dead_fraction"] == pytest.approx(q["dead_count"] / 16)
    topk = SparseAutoencoder(8, 16, tied=False, architecture="topk", k=3)
    topk.reset_parameters(torch.Generator().manual_seed(0))
    hist = reconstruction_metrics(topk, x)["l0_histogram"]
    assert sum(hist["counts"][2:3]) + hist["counts"][1] + hist["counts"][0] == 300  # L0 ≤ 3: bins [0,1) [1,2) [2,4)
