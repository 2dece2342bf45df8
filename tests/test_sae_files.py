"""SAE files: SAELens-style directories (cfg.json + sae_weights.safetensors), exact round trips,
and one-line refusals of corrupt, mismatched or unknown files before any work is done."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lfp.core.errors import ArtifactError
from lfp.sae import CFG_FILENAME, WEIGHTS_FILENAME, SaeTraining, SparseAutoencoder, load_sae, read_sae_config, save_sae, train_sae

SAE_SRC = Path(__file__).resolve().parents[1] / "src" / "lfp" / "sae"
META = {"layer": 3, "ratio": 2, "l1": 1e-3, "seed": 0, "model": "tiny", "task": "vader", "source": "finetuned"}


def trained(tied: bool = True, d: int = 16, h: int = 40) -> SparseAutoencoder:
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((200, d)), 0).astype(np.float32)
    return train_sae(x, h, SaeTraining(l1=1e-3, lr=1e-3, batch_size=32, epochs=1, seed=0, tied=tied))[0]


def inputs(d: int = 16, n: int = 50) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(5).standard_normal((n, d)).astype(np.float32))


def at(path: Path) -> str:
    """Regex: a message that starts with `path`."""
    return "^" + re.escape(str(path))


def tensor_span(weights: Path, name: str) -> tuple[int, int]:
    """Byte range of tensor `name`'s data inside a safetensors file."""
    raw = weights.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    begin, end = json.loads(raw[8 : 8 + n])[name]["data_offsets"]
    return 8 + n + begin, 8 + n + end


def rewrite(directory: Path, tensors: dict[str, torch.Tensor] | None = None, **cfg_changes) -> None:
    """Replace the weights and/or cfg fields, keeping the recorded sha256 consistent, so that only
    the targeted check can fire."""
    weights, cfg_path = directory / WEIGHTS_FILENAME, directory / CFG_FILENAME
    if tensors is not None:
        save_file(tensors, str(weights))
    cfg = json.loads(cfg_path.read_text())
    cfg.update(lfp_weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest(), **cfg_changes)
    cfg_path.write_text(json.dumps(cfg))


def saved(tmp_path: Path, tied: bool = True) -> Path:
    sae = SparseAutoencoder(8, 16, tied=tied)
    sae.reset_parameters(torch.Generator().manual_seed(0))
    out = tmp_path / "layer3-x2"
    save_sae(sae, out, META)
    return out


@pytest.mark.parametrize("tied", [True, False])
def test_round_trip_is_bit_exact_and_gives_identical_codes(tmp_path: Path, tied: bool) -> None:
    sae = trained(tied)
    out = tmp_path / "models/sae/layer3-x2"
    save_sae(sae, out, META)
    assert sorted(p.name for p in out.iterdir()) == [CFG_FILENAME, WEIGHTS_FILENAME]
    back = load_sae(out)
    assert (back.d_in, back.d_hidden, back.tied, back.training, back.architecture) == (16, 40, tied, False, "relu_l1")
    assert all(p.device.type == "cpu" for p in back.parameters())
    assert list(back.state_dict()) == list(sae.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(sae.state_dict().values(), back.state_dict().values()))
    x = inputs()
    assert torch.equal(sae.encode(x), back.encode(x)) and torch.equal(sae(x)[0], back(x)[0])
    assert read_sae_config(out)["lfp_meta"] == META


@pytest.mark.parametrize("tied", [True, False])
def test_files_use_saelens_names_shapes_and_semantics(tmp_path: Path, tied: bool) -> None:
    sae = trained(tied)
    out = tmp_path / "sae"
    save_sae(sae, out, META)
    cfg = json.loads((out / CFG_FILENAME).read_text())
    assert {k: cfg[k] for k in ("d_in", "d_sae", "architecture", "dtype", "device", "apply_b_dec_to_input", "normalize_activations")} == {
        "d_in": 16, "d_sae": 40, "architecture": "standard", "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": False, "normalize_activations": "none",
    }
    assert (cfg["lfp_architecture"], cfg["tied"], cfg["lfp_meta"]) == ("relu_l1", tied, META)
    assert "meta" not in cfg and "metadata" not in cfg  # SAELens parses those keys strictly
    with safe_open(str(out / WEIGHTS_FILENAME), framework="pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    assert {k: tuple(v.shape) for k, v in t.items()} == {"W_enc": (16, 40), "W_dec": (40, 16), "b_enc": (40,), "b_dec": (16,)}
    assert all(v.dtype == torch.float32 for v in t.values())
    assert torch.equal(t["W_dec"], t["W_enc"].t()) == tied
    # SAELens's StandardSAE with apply_b_dec_to_input false: ReLU(x W_enc + b_enc), then f W_dec + b_dec
    x = inputs()
    codes = torch.relu(x @ t["W_enc"] + t["b_enc"])
    torch.testing.assert_close(codes, sae.encode(x), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(codes @ t["W_dec"] + t["b_dec"], sae(x)[0], atol=1e-6, rtol=1e-5)


def test_saelens_loads_the_directory_with_the_same_codes(tmp_path: Path) -> None:
    sae_lens = pytest.importorskip("sae_lens")
    for tied in (True, False):
        sae = trained(tied)
        save_sae(sae, tmp_path / f"s{tied}", META)
        theirs = sae_lens.SAE.load_from_disk(str(tmp_path / f"s{tied}"), device="cpu")
        x = inputs()
        with torch.no_grad():
            torch.testing.assert_close(theirs.encode(x), sae.encode(x), atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(theirs.decode(theirs.encode(x)), sae(x)[0], atol=1e-6, rtol=1e-5)


def test_saving_replaces_the_directory_atomically(tmp_path: Path) -> None:
    out = saved(tmp_path)
    bigger = SparseAutoencoder(8, 24)
    bigger.reset_parameters()
    save_sae(bigger, out, {"layer": 4})
    assert load_sae(out).d_hidden == 24 and read_sae_config(out)["lfp_meta"] == {"layer": 4}
    with pytest.raises(TypeError):
        save_sae(SparseAutoencoder(8, 8), out, {"bad": object()})  # fails while writing cfg.json
    assert load_sae(out).d_hidden == 24  # the old SAE is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer3-x2"]  # no temp dirs left behind


def test_non_finite_weights_are_not_saved(tmp_path: Path) -> None:
    sae = SparseAutoencoder(8, 16)
    sae.reset_parameters()
    with torch.no_grad():
        sae.decoder_bias[2] = float("nan")
    with pytest.raises(ArtifactError, match=r"non-finite weights \(b_dec: 1 of 8 values\)"):
        save_sae(sae, tmp_path / "s", META)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_bit_rotted_non_finite_weights_are_refused_naming_the_file(tmp_path: Path, value: float) -> None:
    out = saved(tmp_path)
    weights = out / WEIGHTS_FILENAME
    size = weights.stat().st_size
    begin, _ = tensor_span(weights, "W_enc")
    raw = bytearray(weights.read_bytes())
    raw[begin + 4 * 5 : begin + 4 * 6] = struct.pack("<f", value)  # same size, one element rotten
    weights.write_bytes(bytes(raw))
    assert weights.stat().st_size == size
    with pytest.raises(ArtifactError, match=at(weights) + r": non-finite weights \(W_enc: 1 of 128 values\)") as err:
        load_sae(out)
    assert "\n" not in str(err.value)


def test_finite_bit_rot_is_caught_by_the_checksum(tmp_path: Path) -> None:
    out = saved(tmp_path)
    weights = out / WEIGHTS_FILENAME
    begin, _ = tensor_span(weights, "b_enc")
    raw = bytearray(weights.read_bytes())
    raw[begin] ^= 0x01  # the lowest mantissa bit of one value: still finite
    weights.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match=at(weights) + r": sha256 .* differs from cfg.json"):
        load_sae(out)


def test_truncated_weights_are_refused_naming_the_file(tmp_path: Path) -> None:
    out = saved(tmp_path)
    weights = out / WEIGHTS_FILENAME
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ArtifactError, match=at(weights) + r": corrupted or truncated"):
        load_sae(out)


def test_weights_that_disagree_with_cfg_are_refused(tmp_path: Path) -> None:
    out = saved(tmp_path, tied=False)
    weights = out / WEIGHTS_FILENAME
    rewrite(out, d_sae=17)
    with pytest.raises(ArtifactError, match=at(weights) + r": tensor 'W_enc' is \[8, 16\] torch.float32, cfg.json says \[8, 17\]"):
        load_sae(out)
    good = {"W_enc": torch.zeros(8, 16), "W_dec": torch.zeros(16, 8), "b_enc": torch.zeros(16), "b_dec": torch.zeros(8)}
    rewrite(out, {**good, "b_dec": torch.zeros(9)}, d_sae=16)
    with pytest.raises(ArtifactError, match=at(weights) + r": tensor 'b_dec' is \[9\]"):
        load_sae(out)
    rewrite(out, {**good, "b_enc": torch.zeros(16, dtype=torch.float64)})
    with pytest.raises(ArtifactError, match=at(weights) + r": tensor 'b_enc' is \[16\] torch.float64"):
        load_sae(out)
    rewrite(out, {k: v for k, v in good.items() if k != "W_dec"})
    with pytest.raises(ArtifactError, match=at(weights) + r": tensors \['W_enc', 'b_dec', 'b_enc'\] are not the expected"):
        load_sae(out)
    rewrite(out, good)
    assert load_sae(out).d_hidden == 16  # the helper itself leaves a loadable SAE


def test_tied_sae_with_different_encoder_and_decoder_is_refused(tmp_path: Path) -> None:
    out = saved(tmp_path, tied=True)
    t = {"W_enc": torch.ones(8, 16), "W_dec": torch.ones(16, 8), "b_enc": torch.zeros(16), "b_dec": torch.zeros(8)}
    rewrite(out, t)
    assert load_sae(out).tied
    t["W_dec"][0, 0] = 2.0
    rewrite(out, t)
    with pytest.raises(ArtifactError, match=r"tied but W_dec is not W_enc"):
        load_sae(out)


@pytest.mark.parametrize(("change", "message"), [
    ({"d_in": None}, "missing field 'd_in'"),
    ({"tied": None}, "missing field 'tied'"),
    ({"lfp_meta": None}, "missing field 'lfp_meta'"),
    ({"d_sae": "16"}, "field 'd_sae' must be a positive integer, got '16'"),
    ({"d_sae": 0}, "field 'd_sae' must be a positive integer, got 0"),
    ({"d_in": True}, "field 'd_in' must be a positive integer, got True"),
    ({"tied": "yes"}, "field 'tied' must be true or false, got 'yes'"),
    ({"lfp_architecture": "jumprelu"}, "unknown lfp_architecture 'jumprelu' (known: relu_l1, topk)"),
    ({"architecture": "topk"}, "field 'architecture' must be 'standard' for lfp_architecture 'relu_l1', got 'topk'"),
    ({"apply_b_dec_to_input": True}, "field 'apply_b_dec_to_input' must be False"),
    ({"normalize_activations": "layer_norm"}, "field 'normalize_activations' must be 'none'"),
    ({"dtype": "bfloat16"}, "field 'dtype' must be 'float32'"),
    ({"lfp_format_version": 2}, "lfp_format_version 2 is not 1"),
])
def test_bad_cfg_is_refused_naming_it(tmp_path: Path, change: dict, message: str) -> None:
    out = saved(tmp_path)
    cfg_path = out / CFG_FILENAME
    cfg = json.loads(cfg_path.read_text())
    for key, value in change.items():
        if value is None:
            del cfg[key]
        else:
            cfg[key] = value
    cfg_path.write_text(json.dumps(cfg))
    for read in (read_sae_config, load_sae):
        with pytest.raises(ArtifactError) as err:
            read(out)
        assert str(err.value).startswith(f"{cfg_path}: ") and message in str(err.value)


def test_missing_or_old_style_paths_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=at(tmp_path / 'nope') + r": SAE directory not found"):
        load_sae(tmp_path / "nope")
    old = tmp_path / "layer3-x1.safetensors"
    old.write_bytes(b"\0" * 64)
    with pytest.raises(ArtifactError, match=at(old) + r": expected an SAE directory"):
        load_sae(old)
    out = saved(tmp_path)
    (out / CFG_FILENAME).unlink()
    with pytest.raises(ArtifactError, match=at(out / CFG_FILENAME) + r": file not found"):
        load_sae(out)
    (out / CFG_FILENAME).write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="expected a JSON object"):
        load_sae(out)
    out = saved(tmp_path)
    (out / WEIGHTS_FILENAME).unlink()
    with pytest.raises(ArtifactError, match=at(out / WEIGHTS_FILENAME) + r": file not found"):
        load_sae(out)


def test_sae_package_leaves_artifact_layout_to_its_callers() -> None:
    """lfp.sae must not decide where artifacts live (lfp.core.paths) nor depend on the stages."""
    for path in sorted(SAE_SRC.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            assert not any(n == "lfp.core.paths" or n.startswith("lfp.stages") for n in names), f"{path.name} imports {names}"
