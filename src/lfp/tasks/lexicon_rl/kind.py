"""Kind `lexicon_rl` (the paper's VADER task): RL on a lexicon reward over review prefixes.

Data: IMDB reviews (`source: imdb`), train split for fine-tuning and the activation corpus, test
split for contrastive sentences, generation prefixes and ablation prompts. Probe: ridge on the
signed activation delta, scored by Kendall τ against the lexicon value of the substituted word.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

from lfp.core import corpora, io
from lfp.core.config import Params
from lfp.core.data import prepared_file, subsample
from lfp.core.errors import ConfigError


class LexiconRl:
    name = "lexicon_rl"
    splits = ("train", "test")
    finetune_method = "grpo"
    probe_method = "ridge"
    ablation_metric = "vader_reward"
    measure_method = "lexicon"

    def prepare(self, params: Params, task: str) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any], dict[str, Any]]:
        spec, cfg = params.task(task), params.prepare
        if spec.source != "imdb":
            raise ConfigError(f"params: 'task_specs.{task}.source' must be 'imdb' for kind lexicon_rl, got '{spec.source}'")
        drops: collections.Counter = collections.Counter({"empty_text": 0})
        out, metrics = {}, {}
        for split, limit in (("train", cfg.imdb_train_limit), ("test", cfg.imdb_test_limit)):
            rows = corpora.read_imdb(split, drops)
            metrics[f"imdb_{split}_raw"] = len(rows)
            out[split] = subsample(rows, limit, params.seed, f"imdb-{split}")
        metrics["dropped"] = dict(drops)
        return out, metrics, {"data_source": "imdb"}

    def activation_corpus(self, params: Params, task: str) -> tuple[list[str], list[str], Path]:
        source = prepared_file(task, "train")
        rows = subsample(io.read_jsonl(source, {"id": str, "text": str}), params.activations.n_texts, params.seed, "activations")
        return [r["id"] for r in rows], [r["text"] for r in rows], source

    default_related_words = "valenced"  # the lexicon the reward is built from


KIND = LexiconRl()
