"""SAE weights bit-rot (same size, 0xFF bytes) through the real `lfp probe` command.

Before: the probe ran ~6.5 min, then sklearn's "Input X contains NaN" traceback. Now: one line
naming the corrupted file, exit 2, in seconds, before any forward pass and nothing written.
"""

from __future__ import annotations

import json
import time

import torch
from rel_helpers import assert_user_error, files_under, run_lfp, write_params

from lfp.core import paths
from lfp.sae import SparseAutoencoder, save_sae


def test_bit_rotted_sae_is_refused_at_load_naming_the_file(tmp_path):
    write_params(tmp_path)
    (tmp_path / "reports/runs/tiny-vader").mkdir(parents=True)
    (tmp_path / "reports/runs/tiny-vader/divergence.json").write_text('{"chosen_layers": [0]}', encoding="utf-8")
    (tmp_path / "data/contrastive").mkdir(parents=True)
    def element(word: str, value: float) -> dict:
        text = f"The film was {word}"
        return {"text": text, "word": word, "span": [13, 13 + len(word)], "value": value}

    triple = {"id": "vader-00000", "positive": element("great", 3.1), "neutral": element("table", 0.0),
              "negative": element("awful", -2.0)}
    (tmp_path / "data/contrastive/vader.jsonl").write_text(json.dumps(triple) + "\n", encoding="utf-8")
    for source in ("finetuned", "base"):
        sae = SparseAutoencoder(8, 8)
        sae.reset_parameters(torch.Generator().manual_seed(0))
        save_sae(sae, tmp_path / paths.sae_path("tiny", "vader", 0, 1, source), {"layer": 0, "ratio": 1})
    weights = tmp_path / paths.sae_path("tiny", "vader", 0, 1, "finetuned") / "sae_weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64:] = b"\xff" * 64  # same size: the last values become NaN
    weights.write_bytes(bytes(data))
    before = files_under(tmp_path)
    start = time.perf_counter()
    proc = run_lfp(["probe", "--model", "tiny", "--task", "vader"], tmp_path, timeout=120)
    assert_user_error(proc, "probe", "sae_weights.safetensors")
    assert time.perf_counter() - start < 60
    assert files_under(tmp_path, skip=("mlflow.db", "mlartifacts")) == {k: v for k, v in before.items()}
