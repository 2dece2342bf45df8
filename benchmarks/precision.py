"""Fine-tuning precision on this CPU: is bf16 autocast faster than fp32 for a model of the real profile's shape?

`finetune.<t>.precision: auto` (lfp.tasks.finetuning.use_bf16) trains in bf16 only where a short
training step of the model itself (STEP_PROBE_SHAPE) measures >= AUTO_BF16_SPEEDUP faster here. This
script checks that probe against what it stands for, a full GRPO-sized step: the forward + backward
of a randomly initialised Llama of SmolLM2-135M's shape (30 layers, width 576, MLP 1536, vocab 49152)
on 32 sequences x 28 tokens, fp32 vs bf16 autocast, best of `--repeats`, and prints both ratios and
what `auto` chooses. (The earlier probe, a matmul of the model's width, said 1.63x at tiny's width
where the step ran 0.67x.) CPUs differ (AVX512-BF16 on AMD EPYC Zen 4: bf16 is native; without it,
emulated): measure on the machine at hand.

Run: `python benchmarks/precision.py [--repeats N]` (`--smoke`: a 2-layer width-64 model, one repeat;
its figures mean nothing).
"""

from __future__ import annotations

import argparse

import torch

from lfp.tasks.finetuning import AUTO_BF16_SPEEDUP, STEP_PROBE_SHAPE, bf16_step_speedup
from lfp.tasks.finetuning import _step_seconds as train_step_seconds  # the very timer `auto` uses, on a larger batch

SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
           "num_key_value_heads": 3, "vocab_size": 49152}
SMOKE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 512}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="tiny model, one repeat: every code path in seconds")
    args = ap.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    shape, repeats, batch = (SMOKE, 1, (4, 28)) if args.smoke else (SMOLLM2, args.repeats, (32, 28))
    if args.smoke:
        print("precision: smoke run (figures mean nothing)")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=True)).train()
    ids = torch.randint(0, shape["vocab_size"], batch)
    probe = bf16_step_speedup(model)
    fp32 = train_step_seconds(model, ids, False, repeats)
    bf16 = train_step_seconds(model, ids, True, repeats)
    print(f"precision: width {shape['hidden_size']}, {shape['num_hidden_layers']} layers, batch {batch[0]}x{batch[1]}, "
          f"{torch.get_num_threads()} threads")
    print(f"precision: auto_probe_speedup={probe:.2f} ({STEP_PROBE_SHAPE[0]}x{STEP_PROBE_SHAPE[1]} step; auto picks bf16 at >= "
          f"{AUTO_BF16_SPEEDUP}: {'bf16' if probe >= AUTO_BF16_SPEEDUP else 'fp32'})")
    print(f"precision: train_step fp32={fp32:.3f} s bf16={bf16:.3f} s train_step_speedup={fp32 / bf16:.2f}")


if __name__ == "__main__":
    main()
