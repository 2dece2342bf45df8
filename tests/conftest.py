"""Shared fixtures: a tiny randomly-initialised GPT-NeoX + BPE tokenizer saved to disk (no network)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_TRACKING_URI", "")  # each test picks its own store (see mlflow_store)

ROOT = Path(__file__).resolve().parents[1]
MICRO_PARAMS = ROOT / "tests" / "micro_params.yaml"

SAMPLE_TEXTS = [
    "This movie was great and I loved the acting.",
    "The film was terrible, boring and far too long.",
    "An okay story with a good cast but a weak ending.",
    "Human: How do I bake bread? Assistant: Mix flour, water, yeast and salt.",
    "I hated every minute of this awful movie.",
    "What a wonderful, beautiful and happy film!",
] * 20


def build_tiny_model(out_dir: Path, *, n_layers: int = 6, d_model: int = 32, vocab_size: int = 300, seed: int = 0) -> Path:
    """Save a tiny GPT-NeoX and a byte-level BPE tokenizer with save_pretrained (safetensors)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    out_dir.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SAMPLE_TEXTS, vocab_size=vocab_size, min_frequency=1, special_tokens=["<|endoftext|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>", bos_token="<|endoftext|>")
    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(
        vocab_size=len(tok), hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=2,
        intermediate_size=2 * d_model, max_position_embeddings=128, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = GPTNeoXForCausalLM(cfg)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny model directory; treat as read-only (copy it before modifying)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def micro_params():
    from lfp.core.params_load import load_params

    return load_params(MICRO_PARAMS)


@pytest.fixture()
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point MLflow at a throwaway sqlite store for one test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="module")
def shared_mlflow_uri(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store per test module for its stage runs: creating a fresh store costs ~10 s on a
    loaded 2-core box (a fixture that sets MLFLOW_TRACKING_URI to it asks for this)."""
    name = request.module.__name__.rpartition(".")[2]
    return f"sqlite:///{tmp_path_factory.mktemp(name + '_mlflow') / 'mlflow.db'}"


@pytest.fixture()
def in_tmp_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run a test with cwd = an empty temp dir (stages use relative paths from lfp.core.paths)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


@pytest.fixture(autouse=True)
def _restore_lfp_params():
    """`lfp.cli.main(["--params", F, ...])` exports LFP_PARAMS=F for the rest of its process (a CLI
    process runs one stage); tests call main() many times in one process, so undo it after each."""
    before = os.environ.get("LFP_PARAMS")
    yield
    if before is None:
        os.environ.pop("LFP_PARAMS", None)
    else:
        os.environ["LFP_PARAMS"] = before


@pytest.fixture()
def one_torch_thread():
    """Micro models run several times faster on one torch thread (no sync cost); on a loaded
    2-core machine a 2-thread GEMM of their size can be ~100x slower. Restores the setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def planted_sae_rows(n_rows: int = 3000, d: int = 32, n_features: int = 64, p_active: float = 0.04, seed: int = 0) -> np.ndarray:
    """SAE training rows with known features (test_sae, test_sae_topk): rows = sparse non-negative combinations of unit feature directions + small noise."""
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n_features, d))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    codes = (rng.random((n_rows, n_features)) < p_active) * rng.exponential(1.0, (n_rows, n_features))
    return (codes @ feats + 0.01 * rng.standard_normal((n_rows, d))).astype(np.float32)
