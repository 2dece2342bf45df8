"""Activation caching overhead: `lfp.stages.activations.cache_activations` vs a bare forward pass.

On a tiny GPT-NeoX (the offline default's shape: d_model 128, 6 layers, vocab 4096) over the same
texts, tokens, batch size and length-sorted batches: the cache (tokenize twice, hook 5 layers,
copy rows out, write .npy files) against the transformer body alone and against the full model
(with its LM head, i.e. "just run the model over the corpus"). Goal: overhead ratio ≤ 1.15. Also
prints the peak RSS while caching next to the RSS before it (the cache itself is streamed to disk),
and checks that memory is bounded: fresh processes cache the corpus and 8 copies of it, and the
extra peak RSS of the 8x process is divided by the extra cache it wrote (the fraction of the
cache held in memory: 1.0 if it were kept whole; goal ≤ 0.10, where allocator noise of a few
tens of MB sits).
Run: `python benchmarks/activations_cache.py [--quick]` (`--smoke`: a seconds-long run of every code
path on a tiny model and corpus, for tests/test_benchmarks.py; its figures mean nothing).
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lfp.models.activation_cache import cache_activations, length_sorted_batches, pad_batch, token_lengths, tokenize

LAYERS = [1, 2, 3, 4, 5]
MAX_LENGTH, BATCH_SIZE, CHUNK_ROWS = 128, 16, 8192  # the offline default's activations params
WORDS = "the movie film was great bad acting story plot ending good awful wonderful boring and I it a of to".split()


SMOKE = {"vocab": 300, "d": 16, "n_layers": 6}  # --smoke: the same code on a model built in a second


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
    ap.add_argument("--smoke", action="store_true", help="seconds: tiny model, 24 texts, 1 repeat (tests; figures mean nothing)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repetitions (best of each is reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke:
        args.repeats = 1
    if args.smoke and not getattr(args, "memory_child", None):
        print("(smoke run: every code path on tiny sizes; the figures below mean nothing)", flush=True)
    if args.memory_child:
        memory_child(args.memory_child, args.quick, args.smoke)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = build(**SMOKE) if args.smoke else build()
    corpus = texts(n_texts(args.quick, args.smoke))
    max_length, batch_size, chunk_rows = MAX_LENGTH, BATCH_SIZE, CHUNK_ROWS
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
    body, full = min(body), min(full)
    cache_s = min(cached)
    print(
        f"activations_cache: overhead_ratio={cache_s / body:.3f} goal=1.15 ratio_vs_full_forward={cache_s / full:.3f} "
        f"cache_seconds={cache_s:.2f} body_seconds={body:.2f} full_forward_seconds={full:.2f} rows={info['n_rows']} "
        f"tokens_per_s={info['n_rows'] / cache_s:.0f} cache_mb={cache_mb:.1f} "
        f"peak_rss_mb_while_caching={max(cache_peak):.0f} rss_before_caching_mb={min(base_rss):.0f} "
        f"threads={torch.get_num_threads()}"
    )
    big = 2 if args.smoke else 8
    peak = {scale: peak_rss_of_child(scale, args) for scale in (1, big)}
    held = (peak[big] - peak[1]) / ((big - 1) * cache_mb)
    print(
        f"activations_cache: memory_held_fraction={held:.3f} goal=0.10 ratio={held / 0.10:.2f} "
        f"peak_rss_mb_1x={peak[1]:.0f} peak_rss_mb_{big}x={peak[big]:.0f} rows_1x={info['n_rows']} rows_{big}x={big * info['n_rows']} "
        f"cache_mb_1x={cache_mb:.0f} cache_mb_{big}x={big * cache_mb:.0f} chunk_rows={chunk_rows}"
    )


def peak_rss_of_child(scale: int, args: argparse.Namespace) -> float:
    """Peak RSS (MB) of a fresh process that builds the model and caches `scale` copies of the corpus."""
    cmd = [sys.executable, __file__, "--memory-child", str(scale)] + (["--quick"] if args.quick else [])
    cmd += ["--smoke"] if args.smoke else []
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def n_texts(quick: bool, smoke: bool) -> int:
    return 24 if smoke else 150 if quick else 1000


def memory_child(scale: int, quick: bool, smoke: bool = False) -> None:
    model, tok = build(**SMOKE) if smoke else build()
    corpus = texts(n_texts(quick, smoke)) * scale
    with tempfile.TemporaryDirectory() as tmp:
        cache_activations(model, tok, corpus, LAYERS, Path(tmp), max_length=MAX_LENGTH, batch_size=BATCH_SIZE, chunk_rows=CHUNK_ROWS)
    print(rss_mb())


if __name__ == "__main__":
    main()
