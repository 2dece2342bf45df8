"""A pretrained base model (hub id, local directory or a GGUF source) loaded, scored on the
held-out reviews like the tiny model, and saved where every later stage reads it."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

from lfp.core.sections import ModelSpec, TinyBase
from lfp.models.gguf_sources import GGUF_SOURCES, load_gguf_model
from lfp.models.heldout import heldout_loss, pack, token_stream
from lfp.models.loading import d_model, load_model, n_layers
from lfp.models.tokens import leading_special_ids


def snapshot(spec: ModelSpec, cfg: TinyBase, held_texts: list[str], out_dir: Path) -> dict[str, Any]:
    """Load a pretrained model (hub id, local dir or a GGUF source), score it on held-out reviews, save it."""
    from accelerate import Accelerator

    with tempfile.TemporaryDirectory(prefix="lfp-base-") as tmp:
        if spec.source in GGUF_SOURCES:
            model, tokenizer = load_gguf_model(spec.source, Path(tmp))
        else:
            model, tokenizer = load_model(spec.source, revision=spec.revision)
        device = Accelerator().device
        model.to(device)
        lead = leading_special_ids(tokenizer)
        held_blocks = pack(token_stream(tokenizer, held_texts), cfg.max_length, keep_tail=True, lead=lead)
        loss = heldout_loss(model, held_blocks, cfg.batch_size, device)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    return {
        "heldout_loss": loss,
        "heldout_ppl": math.exp(loss),
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_layers": n_layers(model),
        "d_model": d_model(model),
        "vocab_size": len(tokenizer),
        "n_heldout_texts": len(held_texts),
        "n_heldout_tokens": sum(len(b) - 1 for b in held_blocks),
        "source": spec.source,
    }

