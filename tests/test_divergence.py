"""Per-layer parameter divergence: zero for identical models, the perturbed block picked."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from lfp.core import io, paths
from lfp.core.errors import ConfigError
from lfp.models.loading import load_model
from lfp.stages import divergence


def perturbed_copy(src: Path, dst: Path, needle: str, scale: float = 0.05) -> Path:
    """Copy a saved model, adding noise to every parameter whose name contains `needle`."""
    model, tok = load_model(src)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        hit = False
        for name, p in model.named_parameters():
            if needle in name:
                p.add_(scale * torch.randn(p.shape, generator=gen))
                hit = True
    assert hit, needle
    model.save_pretrained(dst)
    tok.save_pretrained(dst)
    return dst


def test_identical_models_have_zero_divergence(tiny_model_dir: Path) -> None:
    a, _ = load_model(tiny_model_dir)
    b, _ = load_model(tiny_model_dir)
    block, mlp = divergence.block_divergences(a, b)
    assert len(block) == len(mlp) == 6
    assert block == [0.0] * 6 and mlp == [0.0] * 6


def test_perturbed_mlp_and_attention_are_separated(tiny_model_dir: Path, tmp_path: Path) -> None:
    base, _ = load_model(tiny_model_dir)
    mlp_tuned, _ = load_model(perturbed_copy(tiny_model_dir, tmp_path / "mlp", "layers.3.mlp."))
    block, mlp = divergence.block_divergences(base, mlp_tuned)
    assert block[3] > 0 and mlp[3] == pytest.approx(block[3])
    assert all(block[i] == 0 for i in range(6) if i != 3)
    assert divergence.top_layers(block, 1) == [3]

    attn_tuned, _ = load_model(perturbed_copy(tiny_model_dir, tmp_path / "attn", "layers.2.attention."))
    block, mlp = divergence.block_divergences(base, attn_tuned)
    assert block[2] > 0 and mlp[2] == 0.0


def test_top_layers_sorted_and_ties_stable() -> None:
    assert divergence.top_layers([0.1, 0.5, 0.3, 0.5, 0.0], 3) == [1, 2, 3]
    assert divergence.top_layers([0.0] * 4, 2) == [0, 1]
    with pytest.raises(ConfigError, match="divergence.top_k"):
        divergence.top_layers([1.0, 2.0], 3)


def test_stage_writes_metrics_plot_and_mlflow(tiny_model_dir: Path, in_tmp_project: Path, micro_params) -> None:
    shutil.copytree(tiny_model_dir, in_tmp_project / "models/base/tiny")
    perturbed_copy(tiny_model_dir, in_tmp_project / "models/finetuned/tiny-hh", "layers.4.")
    divergence.run(micro_params, "tiny", "hh")
    out = io.read_json(in_tmp_project / paths.report_dir("tiny", "hh") / "divergence.json")
    assert out["top_k"] == micro_params.divergence.top_k == 5
    assert 4 in out["chosen_layers"] and out["chosen_layers"] == sorted(out["chosen_layers"])
    assert max(range(6), key=out["block_l2"].__getitem__) == 4
    png = in_tmp_project / paths.report_dir("tiny", "hh") / "divergence.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    import mlflow

    runs = mlflow.search_runs(experiment_names=[micro_params.tracking.experiment], output_format="list")
    (run,) = [r for r in runs if r.info.run_name == "divergence@tiny-hh"]
    assert run.data.metrics["total_l2"] == pytest.approx(out["total_l2"])
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "block_l2")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(out["block_l2"])
