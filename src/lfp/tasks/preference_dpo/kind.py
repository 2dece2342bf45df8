"""Kind `preference_dpo` (the paper's HH-RLHF and toxic tasks): DPO on preference pairs.

Data: `source: hh-rlhf` (the `subsets` of data/raw/hh-rlhf, `swap: true` to prefer the rejected
reply, as the offline toxic proxy does) or the path of a local JSONL (`prompt`, `chosen`,
`rejected`). Pairs are split into finetune / heldout by a seeded hash of their id; contrastive
triples, probes and ablations use held-out pairs only. Probe: logistic positive vs negative element.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

from lfp.core import corpora, io
from lfp.core.params import Params
from lfp.core.data import prepared_file, split_heldout, subsample
from lfp.tasks import ContrastiveBackend
from lfp.core.errors import DataError

HH_SOURCE = "hh-rlhf"


class PreferenceDpo:
    name = "preference_dpo"
    splits = ("finetune", "heldout")

    def prepare(self, params: Params, task: str) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any], dict[str, Any]]:
        spec, seed = params.task(task), params.seed
        drops: collections.Counter = collections.Counter({r: 0 for r in corpora.PAIR_DROP_REASONS})
        if spec.source == HH_SOURCE:
            pairs = []
            for subset in spec.subsets:
                got, sub_drops = corpora.read_hh_subset(subset)
                pairs += got
                drops.update(sub_drops)
        else:
            pairs, file_drops = corpora.read_pairs_file(Path(spec.source))
            drops.update(file_drops)
        # `proxy` is recorded on rows that stand in for another data set (or may: a local file)
        marked = spec.proxy or spec.swap or spec.source != HH_SOURCE
        rows = corpora.pair_rows(task, pairs, swap=spec.swap, proxy=spec.proxy if marked else None)
        if len(rows) < 2:
            raise DataError(f"prepare: only {len(rows)} valid {task} pairs after validation; need at least 2")
        finetune, heldout = split_heldout(subsample(rows, params.prepare.max_pairs, seed, f"{task}-limit"),
                                          spec.heldout_fraction, seed, f"{task}-split")
        metrics = {"valid_pairs": len(rows), "dropped": dict(sorted(drops.items()))}
        tags = {"data_source": spec.source if spec.source == HH_SOURCE else "local", "proxy": spec.proxy}
        return {"finetune": finetune, "heldout": heldout}, metrics, tags

    def activation_corpus(self, params: Params, task: str) -> tuple[list[str], list[str], Path]:
        n = params.activations.n_texts
        source = prepared_file(task, "finetune")
        rows = io.read_jsonl(source, {"id": str, "prompt": str, "chosen": str, "rejected": str})
        pairs = subsample(rows, (n + 1) // 2, params.seed, "activations")
        ids = [f"{r['id']}:{k}" for r in pairs for k in ("chosen", "rejected")][:n]
        texts = [r["prompt"] + r[k] for r in pairs for k in ("chosen", "rejected")][:n]
        return ids, texts, source

    default_related_words = "none"  # helpfulness has no lexicon rule: a label is never invented

    def ablation(self) -> Any:
        """validate's Table 6 objective: the DPO implicit reward margin on held-out pairs (lfp.validation.objective.AblationObjective)."""
        from lfp.tasks.preference_dpo.ablation import OBJECTIVE

        return OBJECTIVE

    @property
    def probe_form(self) -> Any:
        """Logistic positive vs negative element, with the bag-of-words baseline (lfp.tasks.preference_dpo.probe)."""
        from lfp.tasks.preference_dpo.probe import FORM

        return FORM

    def finetune(self, params: Params, model: str, task: str) -> None:
        """DPO on the fine-tuning pairs (lfp.tasks.preference_dpo.finetune)."""
        from lfp.tasks.preference_dpo.finetune import finetune

        finetune(params, model, task)

    def contrastive_backend(self, params: Params, task: str) -> ContrastiveBackend:
        from lfp.tasks.preference_dpo.contrastive import backend

        return backend(params, task)

    def contrastive_triples(self, params: Params, task: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Triples from held-out pairs with the configured backend (lfp.tasks.preference_dpo.contrastive)."""
        from lfp.tasks.preference_dpo.contrastive import pair_triples

        return pair_triples(task, params)

    def measure(self, params: Params, model: str, task: str) -> None:
        """DPO's implicit reward per held-out pair and the probes that read it (lfp.tasks.preference_dpo.measure)."""
        from lfp.tasks.preference_dpo.measure import run_preference

        run_preference(params, model, task)

    def report_sections(self) -> Any:
        """Its sentences, rows and sections in the report (lfp.tasks.preference_dpo.report)."""
        from lfp.tasks.preference_dpo.report import REPORT

        return REPORT


KIND = PreferenceDpo()
