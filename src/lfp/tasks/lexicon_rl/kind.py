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
from lfp.core.params import Params
from lfp.core.data import prepared_file, subsample
from lfp.tasks import ContrastiveBackend
from lfp.core.errors import ConfigError


class LexiconRl:
    name = "lexicon_rl"
    splits = ("train", "test")

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

    def ablation(self) -> Any:
        """validate's Table 6 objective: the VADER reward of sampled completions (lfp.validation.objective.AblationObjective)."""
        from lfp.tasks.lexicon_rl.ablation import OBJECTIVE

        return OBJECTIVE

    @property
    def probe_form(self) -> Any:
        """Ridge on the signed delta, Kendall τ per word (lfp.tasks.lexicon_rl.probe)."""
        from lfp.tasks.lexicon_rl.probe import FORM

        return FORM

    def finetune(self, params: Params, model: str, task: str) -> None:
        """GRPO on the lexicon reward (lfp.tasks.lexicon_rl.finetune)."""
        from lfp.tasks.lexicon_rl.finetune import finetune

        finetune(params, model, task)

    def contrastive_backend(self, params: Params, task: str) -> ContrastiveBackend:
        return ContrastiveBackend("lexicon")

    def contrastive_triples(self, params: Params, task: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Lexicon-word substitutions in held-out review sentences (lfp.tasks.lexicon_rl.contrastive)."""
        from lfp.tasks.lexicon_rl.contrastive import vader_triples

        rows = io.read_jsonl(prepared_file(task, "test"), {"id": str, "text": str})
        return vader_triples(rows, getattr(params.contrastive, task), params.seed, task)

    def measure(self, params: Params, model: str, task: str) -> None:
        """Learned values per word with planted / shuffled / seed controls (lfp.tasks.lexicon_rl.measure)."""
        from lfp.tasks.lexicon_rl.measure import measure

        measure(params, model, task)

    def report_sections(self) -> Any:
        """Its sentences, rows and sections in the report (lfp.tasks.lexicon_rl.report)."""
        from lfp.tasks.lexicon_rl.report import REPORT

        return REPORT


KIND = LexiconRl()
