"""The activation cache (lfp.models.activation_cache): padding never stored, rows equal a direct forward pass,
files consistent; the stage caches the same texts and layers for the base and the fine-tuned source."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lfp.models import activation_cache
from lfp.core import io, paths
from lfp.core.errors import ArtifactError
from lfp.models.loading import capture_mlp_outputs, load_model
from lfp.stages import activations

TEXTS = [
    "This movie was great and I loved the acting.",
    "Bad.",
    "",
    "The film was terrible, boring and far too long, and the ending made no sense at all to anyone.",
    "Human: How do I bake bread? Assistant: Mix flour, water, yeast and salt.",
    "What a wonderful film!",
    "I hated every minute of this awful movie.",
]
LAYERS = [1, 4]


@pytest.fixture(scope="module")
def cached(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Cache TEXTS with small batches and a tiny chunk (forces several flushes)."""
    model, tok = load_model(tiny_model_dir)
    out = tmp_path_factory.mktemp("acts")
    info = activation_cache.cache_activations(model, tok, TEXTS, LAYERS, out, max_length=12, batch_size=3, chunk_rows=5)
    return model, tok, out, info


def test_rows_equal_direct_forward_and_exclude_padding(cached) -> None:
    model, tok, out, info = cached
    seqs = activation_cache.tokenize(tok, TEXTS, 12)
    lengths = [len(s) for s in seqs]
    assert lengths[2] == 0 and max(lengths) == 12  # an empty text and a truncated one
    assert info["n_rows"] == sum(lengths)  # not batch x width: padding is never stored
    assert info["text_offsets"] == np.concatenate([[0], np.cumsum(lengths)]).tolist()
    acts = {L: io.load_npy(out / f"layer{L}.npy") for L in LAYERS}
    ids = io.load_npy(out / "input_ids.npy")
    for i, s in enumerate(seqs):
        if not s:
            continue
        lo, hi = info["text_offsets"][i], info["text_offsets"][i + 1]
        assert ids[lo:hi].tolist() == s
        with torch.no_grad(), capture_mlp_outputs(model, LAYERS) as cap:
            model(input_ids=torch.tensor([s]))
            for L in LAYERS:
                np.testing.assert_allclose(acts[L][lo:hi], cap[L][0].numpy(), atol=2e-5, rtol=1e-4)
    assert all(not m._forward_hooks for m in model.modules())  # hooks removed


def test_tokens_index_consistent(cached) -> None:
    _, tok, out, info = cached
    tokens = io.load_npy(out / "tokens.npy")
    assert tokens.dtype == np.int64 and tokens.shape == (info["n_rows"], 2)
    offsets = info["text_offsets"]
    for i in range(len(TEXTS)):
        block = tokens[offsets[i] : offsets[i + 1]]
        assert (block[:, 0] == i).all() and block[:, 1].tolist() == list(range(len(block)))
    for L in LAYERS:
        arr = io.load_npy(out / f"layer{L}.npy")
        assert arr.dtype == np.float32 and arr.shape == (info["n_rows"], info["d_model"])
        assert np.isfinite(arr).all() and (np.abs(arr).sum(axis=1) > 0).all()  # every row written


def test_truncated_npy_raises(cached, tmp_path: Path) -> None:
    _, _, out, _ = cached
    bad = tmp_path / "layer1.npy"
    bad.write_bytes((out / "layer1.npy").read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="layer1.npy"):
        io.load_npy(bad)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_stage_hh_corpus_and_index(tiny_model_dir: Path, in_tmp_project: Path, micro_params) -> None:
    pairs = [{"id": f"p{i}", "prompt": f"Human: question {i}?\n\nAssistant:", "chosen": " a good answer",
              "rejected": " a bad bad answer", "subset": "harmless-base"} for i in range(30)]
    write_jsonl(in_tmp_project / "data/prepared/hh/finetune.jsonl", pairs)
    shutil.copytree(tiny_model_dir, in_tmp_project / "models/finetuned/tiny-hh")
    io.write_json(in_tmp_project / paths.report_dir("tiny", "hh") / "divergence.json", {"chosen_layers": [0, 5]})
    activations.run(micro_params, "tiny", "hh", source="finetuned")
    out = in_tmp_project / "data/activations/tiny-hh/finetuned"
    assert out == in_tmp_project / paths.activations_dir("tiny", "hh", "finetuned")
    index = activation_cache.read_index(out)
    n = micro_params.activations.n_texts
    assert index["layers"] == [0, 5] and index["n_texts"] == n and index["d_model"] == 32
    assert index["source"] == "data/prepared/hh/finetune.jsonl" and index["model"] == "finetuned"
    assert index["text_ids"][:2] == [index["text_ids"][0].split(":")[0] + s for s in (":chosen", ":rejected")]
    assert len(set(index["text_ids"])) == n
    assert activation_cache.load_layer(out, 5, index).shape == (index["n_rows"], 32) == (index["text_offsets"][-1], 32)
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "input_ids.npy", "layer0.npy", "layer5.npy", "tokens.npy"]

    # --source base: the base model over the same texts at the fine-tune's layers (row for row comparable)
    shutil.copytree(tiny_model_dir, in_tmp_project / paths.base_model_dir("tiny"))
    activations.run(micro_params, "tiny", "hh", source="base")
    base_out = in_tmp_project / paths.activations_dir("tiny", "hh", "base")
    base_index = activation_cache.read_index(base_out)
    assert base_index["model"] == "base"
    for key in ("layers", "n_rows", "text_ids", "text_offsets", "source"):
        assert base_index[key] == index[key]
    assert (io.load_npy(base_out / "input_ids.npy") == io.load_npy(out / "input_ids.npy")).all()


def test_stage_rejects_a_layer_outside_the_model(tiny_model_dir: Path, in_tmp_project: Path, micro_params) -> None:
    rows = [{"id": f"imdb-train-{i:06d}", "text": f"Review {i}: a fine film.", "label": i % 2} for i in range(10)]
    write_jsonl(in_tmp_project / "data/prepared/vader/train.jsonl", rows)
    shutil.copytree(tiny_model_dir, in_tmp_project / paths.base_model_dir("tiny"))
    io.write_json(in_tmp_project / paths.divergence_file("tiny", "vader"), {"chosen_layers": [1, 9]})
    with pytest.raises(ArtifactError, match="layer 9 is outside"):
        activations.run(micro_params, "tiny", "vader", source="base")
    assert not paths.activations_dir("tiny", "vader", "base").exists()
