"""Where a GRPO step goes on this CPU: sampling the completions vs the rest (reference and policy
log-probs, backward, optimizer), per precision.

Why: a real model's profile is mostly GRPO steps (the main fine-tune and every in-memory control:
seeds, planted, shuffled arms), and on CPU sampling and training scale differently (sampling streams
every weight once per generated token; training is matmul-bound). A speed change must be chosen by
measuring both parts on the machine at hand, not by a rule (issue #27 item 1). The step is lfp's own
set-up (`lfp.tasks.lexicon_rl.rl.grpo_config` + `train`, the lexicon reward), on prefixes of IMDB
reviews, `--steps` optimizer steps per variant; the first step is reported apart (warm-up).

Run: `python benchmarks/grpo_step.py --model models/base/gemma3 [--variants fp32,bf16] [--steps 3]
[--batch 32] [--new-tokens 19]` (a base model directory from a profile's base stage). `--smoke`: a
2-layer random model with its own tokenizer, one step each; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from typing import Any

VARIANTS = ("fp32", "bf16")


def save_smoke_model(texts: list[str], directory: str) -> str:
    """A tiny random GPT-NeoX and a BPE tokenizer trained on `texts`, saved where GRPOTrainer can load
    its reference copy (it reloads the policy's path): every code path in seconds."""
    from lfp.core.sections import TinyBase
    from lfp.models.tiny import build_tiny_model, train_tokenizer

    tokenizer = train_tokenizer(texts, 300)
    build_tiny_model(TinyBase(d_model=32, n_layers=2, n_heads=2, d_ff=64), tokenizer, 0).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def timed_steps(model: Any, tokenizer: Any, prefixes: list[str], variant: str, steps: int, batch: int, new_tokens: int) -> dict[str, Any]:
    """Seconds of each optimizer step of one GRPO run, and of the sampling inside it."""
    import transformers
    from datasets import Dataset
    from trl import GRPOTrainer

    from lfp.core.sections import GrpoFinetune
    from lfp.tasks.lexicon_rl import rl

    cfg = GrpoFinetune(steps=steps, learning_rate=1e-5, batch_size=batch, mini_batch_size=batch, num_generations=8,
                       min_new_tokens=min(8, new_tokens), max_new_tokens=new_tokens, precision=variant)
    sampling: list[float] = []
    generate = model.generate

    def timed_generate(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = generate(*args, **kwargs)
        sampling.append(time.perf_counter() - start)
        return out

    model.generate = timed_generate
    step_seconds: list[float] = []

    class StepTimer(transformers.TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            step_seconds.append(time.perf_counter() - self.start)

    transformers.set_seed(0)
    with tempfile.TemporaryDirectory(prefix="lfp-bench-grpo-") as tmp:
        trainer = GRPOTrainer(model=model, reward_funcs=rl.make_reward_fn(False), args=rl.grpo_config(cfg, tmp, 0, 1, variant == "bf16"),
                              train_dataset=Dataset.from_dict({"prompt": prefixes}), processing_class=tokenizer, callbacks=[StepTimer()])
        rl.quiet(trainer)
        trainer.train()
    model.generate = generate
    return {"variant": variant, "step_seconds": step_seconds, "sampling_seconds": sampling}


def summary(run: dict[str, Any]) -> str:
    """Steady-state seconds per step (the first step apart) and the sampling share."""
    steps, sampling = run["step_seconds"], run["sampling_seconds"]
    steady = steps[1:] or steps
    steady_sampling = sampling[1 : len(steps)] or sampling[:1]
    per_step = sum(steady) / len(steady)
    per_sampling = sum(steady_sampling) / len(steady_sampling)
    return (f"grpo_step: {run['variant']} step_seconds={per_step:.2f} sampling_seconds={per_sampling:.2f} "
            f"sampling_share={per_sampling / per_step:.2f} rest_seconds={per_step - per_sampling:.2f} first_step={steps[0]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a local base model directory (config.json, safetensors, tokenizer)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: fp32, bf16 (autocast)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32, help="completions per step (GRPO generation batch)")
    ap.add_argument("--new-tokens", type=int, default=19, help="max new tokens per completion")
    ap.add_argument("--smoke", action="store_true", help="tiny random model, one step per variant: every code path in seconds")
    args = ap.parse_args()
    import torch

    from lfp.core import corpora
    from lfp.models.loading import load_model
    from lfp.tasks.lexicon_rl import rl
    from lfp.core.sections import GrpoFinetune

    reviews = [r for r in corpora.read_imdb("test", collections.Counter())[:400] if len(r["text"]) > 200]
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            ap.error(f"--variants: {variant!r} is not one of {', '.join(VARIANTS)}")
    if not args.model and not args.smoke:
        ap.error("--model DIR is required (or --smoke)")
    with tempfile.TemporaryDirectory(prefix="lfp-bench-grpo-model-") as smoke_dir:
        if args.smoke:
            print("grpo_step: smoke run (figures mean nothing)")
            args.steps, args.batch, args.new_tokens = 1, 8, 4
            args.model = save_smoke_model([r["text"] for r in reviews], smoke_dir)
        print(f"grpo_step: model {args.model}, {args.batch} completions x {args.new_tokens} tokens a step, "
              f"{torch.get_num_threads()} threads")
        for variant in args.variants.split(","):
            model, tokenizer = load_model(args.model)
            prefixes = rl.make_prefixes(reviews, tokenizer, GrpoFinetune(), args.batch * args.steps // 8 + 8, 0)
            run = timed_steps(model, tokenizer, prefixes, variant, args.steps, args.batch, args.new_tokens)
            print(summary(run))
            print("grpo_step: raw " + json.dumps({k: [round(x, 2) for x in v] if isinstance(v, list) else v for k, v in run.items()}))

if __name__ == "__main__":
    main()
