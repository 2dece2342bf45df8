"""Load tokenizer + causal LM from a hub id, a local path or the offline `tiny` base, and name
the MLP module whose output is hooked, per architecture.

Why one place: the paper's code hooked the wrong modules and never removed hooks; every stage
gets its hook points and its model loading from here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lfp.core.errors import ModelLoadError


def load_model(path_or_id: str | Path, *, revision: str | None = None, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Return (model, tokenizer) from a local directory or a hub id; never trusts remote code.

    A hub id that cannot be reached fails with one line naming it.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = str(path_or_id)
    local = Path(source)
    if local.exists() and not local.is_dir():
        raise ModelLoadError(f"{source}: model path is a file, expected a directory with config.json")
    if local.is_dir() and not (local / "config.json").is_file():
        raise ModelLoadError(f"{source}: no config.json in model directory")
    if not local.exists() and (local.is_absolute() or source.startswith((".", "~")) or source.count("/") > 1):
        raise ModelLoadError(f"{source}: no such model directory (and not a hub id of the form org/name)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            source, revision=revision, trust_remote_code=False, dtype=dtype, use_safetensors=True
        )
    except OSError as exc:
        hint = "" if local.is_dir() else " (hub unreachable offline? use a local path or source: tiny)"
        raise ModelLoadError(f"{source}: cannot load model{hint}: {str(exc).splitlines()[0][:200]}") from None
    except SafetensorError as exc:
        raise ModelLoadError(f"{source}/model.safetensors: corrupted or truncated weights ({exc})") from None
    except ValueError as exc:
        raise ModelLoadError(f"{source}: cannot load model: {str(exc).splitlines()[0][:200]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def transformer_blocks(model: Any) -> list[Any]:
    """The list of transformer blocks, per architecture."""
    for attr in ("gpt_neox.layers", "transformer.h", "model.layers"):
        obj = model
        try:
            for part in attr.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return list(obj)
    raise ModelLoadError(f"unsupported architecture {type(model).__name__}: no gpt_neox.layers / transformer.h / model.layers")


def block_prefix(model: Any, layer: int) -> str:
    """The parameter-name prefix of block `layer` (for per-block divergence), e.g. `gpt_neox.layers.3.`."""
    blocks = transformer_blocks(model)
    if not 0 <= layer < len(blocks):
        raise ModelLoadError(f"layer {layer} out of range: model has {len(blocks)} blocks")
    for name, module in model.named_modules():
        if module is blocks[layer]:
            return name + "."
    raise ModelLoadError(f"layer {layer} not found in {type(model).__name__}")


def mlp_module(model: Any, layer: int) -> Any:
    """The MLP module of block `layer` whose output (d_model wide) the paper hooks:
    GPT-NeoX `gpt_neox.layers[i].mlp`, GPT-Neo `transformer.h[i].mlp`, Llama/Gemma `model.layers[i].mlp`."""
    blocks = transformer_blocks(model)
    if not 0 <= layer < len(blocks):
        raise ModelLoadError(f"layer {layer} out of range: model has {len(blocks)} blocks")
    return blocks[layer].mlp


def n_layers(model: Any) -> int:
    return len(transformer_blocks(model))


def d_model(model: Any) -> int:
    return int(model.config.hidden_size)


@contextlib.contextmanager
def capture_mlp_outputs(model: Any, layers: list[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Record each listed layer's MLP output during forward passes; hooks are removed on exit."""
    captured: dict[int, torch.Tensor] = {}
    handles = []

    def make_hook(layer: int):
        def hook(_module: Any, _inp: Any, out: Any) -> None:
            captured[layer] = out[0] if isinstance(out, tuple) else out

        return hook

    try:
        for layer in layers:
            handles.append(mlp_module(model, layer).register_forward_hook(make_hook(layer)))
        yield captured
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def replace_mlp_outputs(model: Any, replacements: dict[int, Any]) -> Iterator[None]:
    """Replace layer L's MLP output with `replacements[L](output)` during forward passes
    (used for SAE reconstruction and zero-ablation); hooks are removed on exit."""
    handles = []

    def make_hook(fn: Any):
        def hook(_module: Any, _inp: Any, out: Any) -> Any:
            if isinstance(out, tuple):
                return (fn(out[0]), *out[1:])
            return fn(out)

        return hook

    try:
        for layer, fn in replacements.items():
            handles.append(mlp_module(model, layer).register_forward_hook(make_hook(fn)))
        yield
    finally:
        for h in handles:
            h.remove()
