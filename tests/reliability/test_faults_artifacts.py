"""Corrupted artifacts between stages: a clear ArtifactError / ModelLoadError naming the file.

Already covered elsewhere (referenced in docs/reliability.md): a truncated SAE file
(tests/test_sae.py::test_corrupt_or_mismatched_files_raise), truncated .npy shards
(tests/test_io.py::test_truncated_npy_is_detected, tests/test_activations.py::test_truncated_npy_raises),
a truncated safetensors file via io.load_tensors (tests/test_io.py::test_safetensors_round_trip_and_truncation).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from rel_helpers import assert_user_error, run_lfp, write_params

from lfp.core import io, paths
from lfp.core.errors import ArtifactError, ModelLoadError


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


MODEL_DAMAGE = {
    "config_json_garbage": ("config.json", lambda p: p.write_text("{not json"), "config.json"),
    "tokenizer_json_garbage": ("tokenizer.json", lambda p: p.write_text("{not json"), ""),
    "weights_missing": ("model.safetensors", Path.unlink, "model.safetensors"),
    "weights_truncated": ("model.safetensors", _truncate, "model.safetensors"),
}

@pytest.mark.parametrize("case", list(MODEL_DAMAGE))
def test_damaged_model_directory_is_a_model_load_error_naming_it(tiny_model_dir, tmp_path, case):
    name, damage, needle = MODEL_DAMAGE[case]
    copy = shutil.copytree(tiny_model_dir, tmp_path / "finetuned")
    damage(copy / name)
    with pytest.raises(ModelLoadError) as info:
        from lfp.models.loading import load_model

        load_model(copy)
    message = str(info.value)
    assert str(copy) in message and needle in message and "\n" not in message


def test_activation_shard_of_the_wrong_shape_is_refused(tmp_path):
    """A complete, valid .npy that does not match index.json (e.g. copied from another run)."""
    from lfp.models.activation_cache import load_layer

    np.save(tmp_path / "layer2.npy", np.zeros((10, 8), dtype=np.float32))
    with pytest.raises(ArtifactError, match=r"layer2\.npy: expected float32 \(12, 8\)"):
        load_layer(tmp_path, 2, {"n_rows": 12, "d_model": 8})


def test_truncated_divergence_json_via_cli_names_the_file(tmp_path):
    """`lfp activations` reads the chosen layers first: half a JSON file stops it in one line."""
    write_params(tmp_path)
    target = tmp_path / paths.report_dir("tiny", "vader") / "divergence.json"
    io.write_json(target, {"chosen_layers": [0, 1, 2, 3, 4], "block_l2": [0.1] * 6})
    _truncate(target)
    proc = run_lfp(["activations", "--model", "tiny", "--task", "vader", "--source", "base"], tmp_path, timeout=120)
    assert_user_error(proc, "activations", "divergence.json", "not valid JSON")
    assert not (tmp_path / paths.activations_dir("tiny", "vader", "base")).exists()
