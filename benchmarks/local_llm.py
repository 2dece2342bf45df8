"""The local LLM's cost on this machine: server start, generation tokens/s, seconds per
explanation (+ relatedness label) and per HH grade + rewrite, through lfp's real client path.

    python benchmarks/local_llm.py [--gguf smollm2|PATH] [--threads 0] [--n 5]

`--smoke`: every code path in seconds (one generation of 8 tokens, one explanation of a record of
2 contexts x 8 tokens and one grade + rewrite, replies cut at 32 tokens), for tests/test_benchmarks.py; its figures mean nothing.

Uses held-out HH pairs from data/prepared/hh/heldout.jsonl when present (built-in ones otherwise)
and explanation records shaped like the default's (10 contexts x 24 tokens). Prints the load
average too: on a shared machine every figure moves with it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.request
from collections import Counter
from pathlib import Path

from lfp.core.sections import Llm
from lfp.validation.explainers import Context, FeatureRecord, OpenAIExplainer
from lfp.llm.local_server import open_client
from lfp.llm.templates import load_prompt
from lfp.tasks.preference_dpo import contrastive

BUILTIN_PAIRS = [
    {"id": "b1", "prompt": "\n\nHuman: How do I make my neighbor's dog stop barking?\n\nAssistant:",
     "chosen": " You could talk to your neighbor politely about it, or contact local animal control if it continues."},
    {"id": "b2", "prompt": "\n\nHuman: What's a good way to get back at my coworker?\n\nAssistant:",
     "chosen": " I'd suggest not seeking revenge; talking to your manager or the coworker directly is better."},
    {"id": "b3", "prompt": "\n\nHuman: Can you help me write a birthday card for my mom?\n\nAssistant:",
     "chosen": " Of course! Happy birthday, Mom - thank you for everything you do."},
]
WORDS = ("the movie was great and i loved every minute of it but the ending felt a bit slow and "
         "the acting of the lead was truly wonderful while the music was fine").split()


def record(feature: int, n_contexts: int = 10, size: int = 24) -> FeatureRecord:
    """A feature firing on 'great'/'wonderful'/'loved', shown as the default shows one."""
    top = []
    for i in range(n_contexts):
        toks = [f" {WORDS[(i * 7 + j) % len(WORDS)]}" for j in range(size)]
        acts = [10 if t.strip() in ("great", "wonderful") else 4 if t.strip() == "loved" else 0 for t in toks]
        if not any(acts):
            acts[-1], toks[-1] = 10, " great"
        top.append(Context(tokens=toks, words=[t.strip() for t in toks], acts=acts, peak=acts.index(max(acts))))
    return FeatureRecord(layer=1, feature=feature, similarity=0.9, max_activation=3.0, top=top, random=[])


def generation_speed(base_url: str, model: str, n_tokens: int = 128) -> dict[str, float]:
    """llama.cpp's own timings for one unconstrained generation of n_tokens (ignore_eos)."""
    body = {"model": model, "max_tokens": n_tokens, "temperature": 0, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Write a long story about a cat who learns to sail."}]}
    req = urllib.request.Request(f"{base_url}/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        timings = json.loads(resp.read())["timings"]
    return {"gen_tok_s": timings["predicted_per_second"], "prompt_tok_s": timings["prompt_per_second"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", default="smollm2")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--n", type=int, default=5, help="explanations and rewrites each")
    ap.add_argument("--smoke", action="store_true", help="seconds: n 1, replies of 32 tokens, one 8-token generation (tests)")
    args = ap.parse_args()
    runs, gen_tokens = 3, 128
    if args.smoke:
        print("(smoke run: every code path on tiny sizes; the figures below mean nothing)")
        args.n, args.max_tokens, runs, gen_tokens = 1, 32, 1, 8
    print(f"load average before: {os.getloadavg()[0]:.2f} on {len(os.sched_getaffinity(0))} cores")
    t0 = time.perf_counter()
    with open_client(Llm(server="local", gguf=args.gguf, threads=args.threads, max_tokens=args.max_tokens)) as client:
        print(f"server start + endpoint check: {time.perf_counter() - t0:.2f} s  ({client.model_id})")
        speeds = [generation_speed(client.base_url, client.model, gen_tokens) for _ in range(runs)]
        print(f"generation tokens/s ({runs} runs of {gen_tokens}): " + ", ".join(f"{s['gen_tok_s']:.1f}" for s in speeds)
              + f"; prompt tokens/s: {max(s['prompt_tok_s'] for s in speeds):.0f}")
        explainer = OpenAIExplainer(client, "training the model to generate completions with positive sentiment", simulate=False, seed=0)
        times, labelled = [], 0
        for i in range(args.n):
            t = time.perf_counter()
            result = explainer.explain(record(i, 2, 8) if args.smoke else record(i))
            times.append(time.perf_counter() - t)
            labelled += result.related is not None
            print(f"  explanation {i}: {times[-1]:.2f} s  related={result.related}  {result.explanation[:90]!r}")
        print(f"seconds per explanation + label: {sum(times) / len(times):.2f} (median {sorted(times)[len(times) // 2]:.2f}); "
              f"{labelled}/{args.n} usable")
        heldout = Path("data/prepared/hh/heldout.jsonl")
        pairs = [json.loads(line) for line in heldout.open()][: args.n] if heldout.is_file() else BUILTIN_PAIRS
        prompts = {"grade": load_prompt("contrastive_grade"), "rewrite": load_prompt("contrastive_rewrite")}
        times, skipped, kept = [], Counter(), 0
        for row in pairs[: args.n]:
            t = time.perf_counter()
            triple = contrastive.openai_triple("hh", row, client, prompts, skipped)
            times.append(time.perf_counter() - t)
            kept += triple is not None
            shown = {k: triple[k]["response"][:50] for k in ("positive", "negative")} if triple else None
            print(f"  grade + rewrite: {times[-1]:.2f} s  grades={triple and triple['grades']}  {shown}")
        print(f"seconds per grade + rewrite: {sum(times) / len(times):.2f}; {kept}/{len(times)} usable, skipped {dict(skipped)}")
        u = client.usage
        print(f"client totals: {u['calls']} calls, {u['prompt_tokens']} prompt + {u['completion_tokens']} completion tokens, {u['seconds']:.1f} s")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
