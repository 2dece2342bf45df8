"""Activation caching overhead: `lfp.stages.activations.cache_activations` vs a bare forward pass.

On a tiny GPT-NeoX (the offline default's shape: d_model 128, 6 layers, vocab 4096) over the same
texts, tokens, batch size and length-sorted batches: the cache (tokenize twice, hook 5 layers,
copy rows out, write .npy files) against the transformer body alone and against the full model
(with its LM head, i.e. "just run the model over the corpus"). Goal: overhead ratio ≤ 1.15. Also
prints the peak RSS while caching next to the RSS before it (the cache itself is streamed to disk),
and checks that memory is bounded: the peak RSS growth while caching a corpus 4x as large, over
the growth for the corpus itself (goal ≤ 1.10: it must not grow with corpus size).
Run: `python benchmarks/activations_cache.py [--quick]`.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lfp.stages.activations import cache_activations, length_sorted_batches, pad_batch, token_lengths, tokenize

LAYERS = [1, 2, 3, 4, 5]
WORDS = "the movie film was great bad acting story plot ending good awful wonderful boring and I it a of to".split()


def build(vocab: int = 4096, d: int = 128, n_layers: int = 6, seed: int = 0):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    rng = np.random.default_rng(seed)
    corpus = [" ".join(rng.choice(WORDS, 30)) for _ in range(200)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=vocab, min_frequency=1, special_tokens=["<|endoftext|>"], show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=n_layers, num_attention_heads=4,
                        intermediate_size=4 * d, max_position_embeddings=256)
    return GPTNeoXForCausalLM(cfg).eval(), tok


def texts(n: int, seed: int = 1) -> list[str]:
    """Reviews of 20..200 words: lengths vary like a real corpus, so batching and padding matter."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(20, 200)))) for _ in range(n)]


@torch.inference_mode()
def bare_forward(module, tok, corpus: list[str], max_length: int, batch_size: int) -> float:
    """Seconds to tokenize and run `module` over the corpus in the cache's batches, storing nothing."""
    start = time.perf_counter()
    lengths = token_lengths(tok, corpus, max_length)
    for batch in length_sorted_batches(lengths, batch_size):
        ids, mask = pad_batch(tokenize(tok, [corpus[i] for i in batch], max_length), tok.pad_token_id)
        module(input_ids=ids, attention_mask=mask, use_cache=False)
    return time.perf_counter() - start


def rss_mb() -> float:
    """Peak resident set (MB) since the last `reset_peak_rss` (Linux VmHWM), else since start."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM, so the next peak is the caching run's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="150 texts instead of 1,000")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repetitions (best of each is reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = build()
    corpus = texts(150 if args.quick else 1000)
    max_length, batch_size, chunk_rows = 128, 16, 8192
    bare_forward(model.base_model, tok, corpus[:32], max_length, batch_size)  # warm-up
    body, full, cached, cache_peak, base_rss = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):  # interleaved, best of each: robust to a shared CPU
            body.append(bare_forward(model.base_model, tok, corpus, max_length, batch_size))
            full.append(bare_forward(model, tok, corpus, max_length, batch_size))
            base_rss.append(current_rss_mb())
            reset_peak_rss()
            start = time.perf_counter()
            info = cache_activations(model, tok, corpus, LAYERS, Path(tmp), max_length=max_length,
                                     batch_size=batch_size, chunk_rows=chunk_rows)
            cached.append(time.perf_counter() - start)
            cache_peak.append(rss_mb())
        cache_mb = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 2**20
    growth = {}
    for scale in (1, 4):  # the same corpus, then 4 copies of it: 4x the rows written
        with tempfile.TemporaryDirectory() as tmp:
            before = current_rss_mb()
            reset_peak_rss()
            cache_activations(model, tok, corpus * scale, LAYERS, Path(tmp), max_length=max_length,
                              batch_size=batch_size, chunk_rows=chunk_rows)
            growth[scale] = max(rss_mb() - before, 1.0)  # MB above the pre-caching RSS (>= 1 MB)
    body, full = min(body), min(full)
    cache_s = min(cached)
    print(
        f"activations_cache: overhead_ratio={cache_s / body:.3f} goal=1.15 ratio_vs_full_forward={cache_s / full:.3f} "
        f"cache_seconds={cache_s:.2f} body_seconds={body:.2f} full_forward_seconds={full:.2f} rows={info['n_rows']} "
        f"tokens_per_s={info['n_rows'] / cache_s:.0f} cache_mb={cache_mb:.1f} "
        f"peak_rss_mb_while_caching={max(cache_peak):.0f} rss_before_caching_mb={min(base_rss):.0f} "
        f"threads={torch.get_num_threads()}"
    )
    print(
        f"activations_cache: memory_growth_ratio_4x_corpus={growth[4] / growth[1]:.3f} goal=1.10 "
        f"rss_growth_mb_1x={growth[1]:.0f} rss_growth_mb_4x={growth[4]:.0f} rows_1x={info['n_rows']} rows_4x={4 * info['n_rows']} "
        f"chunk_rows={chunk_rows}"
    )


if __name__ == "__main__":
    main()
