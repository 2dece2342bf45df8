"""lfp.models.loading: loading, hook points per architecture, hook capture/replacement and cleanup."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lfp.models import loading as modeling
from lfp.core.errors import ModelLoadError

VOCAB = 64
D = 16
LAYERS = 3


def _gpt_neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=LAYERS,
                                            num_attention_heads=2, intermediate_size=2 * D))


def _gpt_neo():
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    return GPTNeoForCausalLM(GPTNeoConfig(vocab_size=VOCAB, hidden_size=D, num_layers=LAYERS, num_heads=2,
                                          attention_types=[[["global", "local"], 1], [["global"], 1]],
                                          intermediate_size=2 * D, max_position_embeddings=64, window_size=8))


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=LAYERS,
                                        num_attention_heads=2, num_key_value_heads=1, intermediate_size=2 * D))


def _gemma():
    from transformers import GemmaConfig, GemmaForCausalLM

    return GemmaForCausalLM(GemmaConfig(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=2,
                                        num_key_value_heads=1, head_dim=8, intermediate_size=2 * D))


# architecture -> (builder, the parameter-name prefix of block 1 where the paper's hook lives)
ARCHS = {
    "gpt_neox": (_gpt_neox, "gpt_neox.layers.1."),
    "gpt_neo": (_gpt_neo, "transformer.h.1."),
    "llama": (_llama, "model.layers.1."),
    "gemma": (_gemma, "model.layers.1."),
}


@pytest.fixture(params=sorted(ARCHS))
def arch_model(request):
    torch.manual_seed(0)
    build, prefix = ARCHS[request.param]
    return build().eval(), prefix


def _ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))


def test_hook_points_per_architecture(arch_model):
    model, prefix = arch_model
    assert modeling.n_layers(model) == LAYERS
    assert modeling.d_model(model) == D
    assert modeling.block_prefix(model, 1) == prefix
    names = {id(m): n for n, m in model.named_modules()}
    assert names[id(modeling.mlp_module(model, 1))] == prefix + "mlp"
    with pytest.raises(ModelLoadError, match="out of range"):
        modeling.mlp_module(model, LAYERS)
    with pytest.raises(ModelLoadError, match="out of range"):
        modeling.block_prefix(model, -1)


def test_capture_equals_mlp_output_and_hooks_are_removed(arch_model):
    model, _ = arch_model
    mlp = modeling.mlp_module(model, 2)
    inputs: list[torch.Tensor] = []
    spy = mlp.register_forward_hook(lambda _m, inp, _out: inputs.append(inp[0]))
    try:
        with torch.inference_mode(), modeling.capture_mlp_outputs(model, [0, 2]) as captured:
            model(input_ids=_ids())
            assert len(mlp._forward_hooks) == 2  # ours + the spy
    finally:
        spy.remove()
    assert sorted(captured) == [0, 2]
    assert captured[2].shape == (2, 7, D)
    with torch.inference_mode():
        torch.testing.assert_close(captured[2], mlp(inputs[0]))
    for layer in range(LAYERS):
        assert not modeling.mlp_module(model, layer)._forward_hooks


def test_hooks_removed_when_the_block_raises(arch_model):
    model, _ = arch_model
    with pytest.raises(RuntimeError, match="boom"):
        with modeling.capture_mlp_outputs(model, [1]):
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        with modeling.replace_mlp_outputs(model, {1: torch.zeros_like}):
            raise RuntimeError("boom")
    assert not modeling.mlp_module(model, 1)._forward_hooks


def test_replace_identity_keeps_logits_zero_changes_them(arch_model):
    model, _ = arch_model
    ids = _ids()
    with torch.inference_mode():
        clean = model(input_ids=ids).logits
        with modeling.replace_mlp_outputs(model, {1: lambda x: x}):
            same = model(input_ids=ids).logits
        with modeling.replace_mlp_outputs(model, {1: torch.zeros_like}):
            ablated = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
    torch.testing.assert_close(same, clean)
    assert (ablated - clean).abs().max() > 1e-4
    torch.testing.assert_close(after, clean)
    assert not modeling.mlp_module(model, 1)._forward_hooks


def test_load_model_round_trip_gives_same_logits(tiny_model_dir: Path, tmp_path: Path):
    model, tok = modeling.load_model(tiny_model_dir)
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert tok.pad_token is not None
    model.save_pretrained(tmp_path / "copy")
    tok.save_pretrained(tmp_path / "copy")
    assert (tmp_path / "copy" / "model.safetensors").is_file()
    again, tok2 = modeling.load_model(tmp_path / "copy")
    ids = tok("a good movie", return_tensors="pt")["input_ids"]
    assert tok2("a good movie", return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    with torch.inference_mode():
        torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)


def test_load_model_bad_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file"):
        modeling.load_model(a_file)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        modeling.load_model(tmp_path / "empty")
    with pytest.raises(ModelLoadError, match="no such model directory"):
        modeling.load_model(tmp_path / "missing")


def test_load_model_offline_hub_id_fails_with_one_line(monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    fake = "lfp-test-org/no-such-model-xyz"
    with pytest.raises(ModelLoadError) as info:
        modeling.load_model(fake)
    message = str(info.value)
    assert fake in message and "\n" not in message


def test_unsupported_architecture_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="unsupported architecture"):
        modeling.transformer_blocks(torch.nn.Linear(2, 2))
