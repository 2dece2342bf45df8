"""explain@{m}-{t}: explain the best-matched features of each chosen layer's small SAE and label
them related / unrelated to the fine-tuning task; likewise the crosscoder's fine-tune-specific
latents (lfp.validation.crosscoder_latents, reports/runs/{m}-{t}/crosscoder_latents.jsonl).

Why these choices: the paper explains only features that the n and 2n dictionaries share (highest
cross-dictionary cosine), reading *feature codes* of the small dictionary (the paper's code read
reconstruction dims and used small-dictionary indices on the large one). Activation records come
from a diverse corpus (IMDB reviews + HH dialogues): the paper's appendix B notes that an
IMDB-only sample skews every explanation towards "movie reviews". The corpus, the records and the
detection scores are lfp.validation's (corpus, records, detection); this module runs them.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
from tqdm import tqdm

from lfp.core import io, paths
from lfp.core.layers import chosen_layers
from lfp.core.params import Params, section_dict
from lfp.tasks import related_rule
from lfp.validation import artifacts, corpus, crosscoder_latents, detection, records
from lfp.validation.explainers import OfflineExplainer, OpenAIExplainer

STAGE = "explain"


def make_explainer(params: Params, task: str) -> OfflineExplainer | OpenAIExplainer:
    cfg = params.explain
    if cfg.backend == "openai":
        from lfp.llm.local_server import open_client

        # an endpoint that is down (or a local server that cannot start) fails here, before the
        # corpus is encoded; with llm.server: local this starts the server (stopped by close())
        client = open_client(params.llm)
        return OpenAIExplainer(client, cfg.task_descriptions[task], cfg.simulate, params.seed)
    return OfflineExplainer(related_rule(params, task), cfg.related_threshold, cfg.simulate, cfg.task_descriptions.get(task, ""))


def summarize(rows: list[dict[str, Any]], explainer: Any, n_texts: int) -> dict[str, Any]:
    scores = [r["simulation_score"] for r in rows if r["simulation_score"] is not None]
    related = [r["related"] for r in rows]
    return {
        "backend": explainer.name,
        "simulation_backend": explainer.simulation_backend if explainer.simulate else "none",
        "explainer_is_proxy": explainer.name == "offline",
        "n_features": len(rows),
        "n_layers": len({r["layer"] for r in rows}),
        "n_related": sum(r is True for r in related),
        "n_unrelated": sum(r is False for r in related),
        "n_unlabelled": sum(r is None for r in related),
        "n_simulation_scored": len(scores),
        "mean_simulation_score": float(np.mean(scores)) if scores else None,
        "corpus_texts": n_texts,
    }


def run(params: Params, model: str, task: str) -> None:
    """Explain, label and score the top matched features of every chosen layer."""
    from lfp.sae import load_sae
    from lfp.core.stage_context import open_stage

    cfg = params.explain
    layers = chosen_layers(model, task)
    selected = artifacts.selected_features(model, task, layers, cfg.top_k_features)
    explainer = make_explainer(params, task)  # fails fast on a bad endpoint config / missing key
    tags = {"explainer": explainer.name, "simulation_backend": explainer.simulation_backend if cfg.simulate else "none"}
    if explainer.name == "offline":
        tags["explainer_is_proxy"] = "true"
    else:
        tags.update({"llm_base_url": explainer.client.base_url, "llm_model": explainer.client.model_id,
                     "llm_server": params.llm.server})
    log_params = {"explain": section_dict(cfg), "sae_ratio": min(params.sae.ratios)}
    if explainer.name == "openai":
        log_params["llm"] = section_dict(params.llm)
    with contextlib.closing(explainer), open_stage(STAGE, params, model=model, task=task, log_params=log_params, tags=tags) as stage:
        run_, device = stage.run, stage.device
        lm, tokenizer = stage.load(paths.finetuned_dir(model, task))
        saes = {L: load_sae(paths.sae_path(model, task, L, min(params.sae.ratios))).to(device).eval() for L in layers}
        texts = corpus.load_corpus(params)
        encoded = corpus.encode_corpus(lm, tokenizer, saes, {L: [f for f, _ in selected[L]] for L in layers}, texts,
                                         cfg.max_length, cfg.batch_size, device)
        rng = np.random.default_rng(params.seed)
        rows, held = [], []
        for L in layers:
            for column, (feature, sim) in enumerate(tqdm(selected[L], desc=f"explain layer {L}", leave=False)):
                record = records.feature_record(encoded, L, column, feature, sim, cfg.n_contexts, cfg.context_tokens, rng)
                result = explainer.explain(record)
                rows.append({
                    "layer": L, "feature": feature, "similarity": sim, "explanation": result.explanation,
                    "related": result.related, "backend": explainer.name, "top_tokens": result.top_tokens,
                    "simulation_score": result.simulation_score, "max_activation": record.max_activation,
                    "contexts": records.context_rows(record.top), "activation_histogram": records.activation_histogram(encoded, L, column),
                })
                # its own generator: the stage's `rng` (random contexts of later features) stays as it was
                held.append(records.heldout_contexts(encoded, L, column, cfg.n_contexts, cfg.detection_contexts, cfg.context_tokens,
                                                     np.random.default_rng([params.seed, L, feature])))
        summary = summarize(rows, explainer, len(texts))
        # which model wrote the explanations (GGUF file + sha256 for a local server), copied into validate.json
        summary["llm_model"] = explainer.client.model_id if explainer.name != "offline" else "none (offline lexicon explainer)"
        if cfg.detection_contexts:
            detection.detection_scores(rows, held, explainer, params.seed)
            summary |= detection.detection_summary(rows, explainer, cfg.bootstrap, params.seed)
        out_dir = paths.report_dir(model, task)
        if cfg.crosscoder_latents:  # the crosscoder's fine-tune-specific latents, the same explainer and rule
            chosen, crosscoders, n_below = crosscoder_latents.specific_latents(model, task, layers, params.diffing.specific_nu,
                                                                               cfg.crosscoder_latents)
            base = stage.load(paths.base_model_dir(model))[0]
            encoded_cc = crosscoder_latents.encode(base, lm, tokenizer, crosscoders, chosen, texts, cfg.max_length, cfg.batch_size, device)
            cc_rows = crosscoder_latents.explain_latents(encoded_cc, chosen, explainer, cfg, params.seed)
            summary |= crosscoder_latents.summary(cc_rows, n_below)
            io.write_jsonl(out_dir / "crosscoder_latents.jsonl", cc_rows)
            run_.log_artifact(out_dir / "crosscoder_latents.jsonl")
        io.write_jsonl(out_dir / "features.jsonl", rows)
        run_.write_metrics(out_dir / "explain.json", summary)
        run_.log_artifact(out_dir / "features.jsonl")
