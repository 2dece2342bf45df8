"""The tiny base model: a named PROXY for Pythia trained from scratch on IMDB reviews.

A byte-level BPE tokenizer (Pythia's tokenizer family, `<|endoftext|>` as bos/eos/pad) and a small
GPT-NeoX (Pythia's architecture: parallel residual, 25% rotary) trained on packed fixed-length
blocks (AdamW, linear warmup + cosine decay, gradient clipping at 1.0, as Pythia).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from lfp.core.errors import DataError
from lfp.core.params import Params
from lfp.core.sections import TinyBase
from lfp.models.heldout import heldout_loss, pack, token_stream
from lfp.models.loading import d_model, n_layers

EOS = "<|endoftext|>"

GRAD_CLIP = 1.0  # Pythia's gradient clipping

MAX_POSITIONS = 2048  # Pythia's context; rotary positions, so longer than the training blocks
TIMING_KEYS = ("train_seconds", "train_tokens_per_s")  # the only metrics that vary between runs


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE (like Pythia's) wrapped as a transformers fast tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS, pad_token=EOS, model_max_length=MAX_POSITIONS
    )


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

