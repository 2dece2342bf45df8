"""explain@{m}-{t}: explain the best-matched features of each chosen layer's small SAE and label
them related / unrelated to the fine-tuning task.

Why these choices: the paper explains only features that the n and 2n dictionaries share (highest
cross-dictionary cosine), reading *feature codes* of the small dictionary (the paper's code read
reconstruction dims and used small-dictionary indices on the large one). Activation records come
from a diverse corpus (IMDB reviews + HH dialogues): the paper's appendix B notes that an
IMDB-only sample skews every explanation towards "movie reviews".
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lfp.core import io, paths
from lfp.core.config import Params, section_dict
from lfp.core.data import prepared_file
from lfp.validation.detection import (
    HeldOut,
    LlmDetector,
    derangement,
    explanation_words,
    lexicon_detect,
    score,
)
from lfp.validation.detection import summarize as summarize_scores
from lfp.core.errors import ArtifactError, DataError
from lfp.validation.explainers import (
    MAX_ACT,
    UNUSABLE,
    Context,
    FeatureRecord,
    OfflineExplainer,
    OpenAIExplainer,
    decode_tokens,
    normalize_word,
    scale_activations,
)
from lfp.core.layers import chosen_layers
from lfp.tasks import related_rule

STAGE = "explain"
HIST_BINS = 20  # activation histogram of each feature over the corpus (for the dashboards)


@dataclass
class EncodedText:
    """One corpus text after the forward pass: token strings, words, and the chosen features' codes."""

    tokens: list[str]
    words: list[str]
    codes: dict[int, np.ndarray]  # layer -> [n_tokens, n_selected_features]


# --------------------------------------------------------------------------------------------
# upstream artifacts
# --------------------------------------------------------------------------------------------


def selected_features(model: str, task: str, layers: list[int], top_k: int) -> dict[int, list[tuple[int, float]]]:
    """layer -> [(small-dict feature index, max cosine to the large dict)], best first."""
    path = paths.matching_file(model, task)
    data = io.read_json(path).get("layers", {})
    out = {}
    for layer in layers:
        entry = data.get(str(layer))
        if not isinstance(entry, dict) or "ranked_features" not in entry or "max_cos" not in entry:
            raise ArtifactError(f"{path}: layers.{layer} lacks 'ranked_features' / 'max_cos'")
        ranked, max_cos = entry["ranked_features"], entry["max_cos"]
        if any(not isinstance(f, int) or not 0 <= f < len(max_cos) for f in ranked):
            raise ArtifactError(f"{path}: layers.{layer}.ranked_features has an index outside max_cos")
        out[layer] = [(f, float(max_cos[f])) for f in ranked[:top_k]]
    return out


def load_corpus(params: Params) -> list[str]:
    """Half held-out reviews of `explain.review_task`, half held-out dialogues (prompt + chosen
    reply) of `explain.dialogue_task`, seeded: the same corpus for every task's features. An empty
    `dialogue_task` (a profile without preference tasks) makes it all reviews."""
    cfg = params.explain
    n_texts, seed = cfg.corpus_texts, params.seed
    rng = np.random.default_rng(seed)
    imdb = [row["text"] for row in io.read_jsonl(prepared_file(cfg.review_task, "test"), {"text": str})]
    hh = ([row["prompt"] + row["chosen"] for row in io.read_jsonl(prepared_file(cfg.dialogue_task, "heldout"), {"prompt": str, "chosen": str})]
          if cfg.dialogue_task else [])
    n_imdb = n_texts // 2 if cfg.dialogue_task else n_texts
    picked = []
    for rows, n in ((imdb, n_imdb), (hh, n_texts - n_imdb)):
        idx = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
        picked += [rows[i] for i in sorted(idx)]
    if not picked:
        raise DataError(f"{paths.PREPARED}: no texts for the explanation corpus")
    return picked


# --------------------------------------------------------------------------------------------
# activation records
# --------------------------------------------------------------------------------------------


def token_words(text: str, offsets: list[tuple[int, int]]) -> list[str]:
    """The normalized whitespace-delimited word containing each token (BPE pieces -> whole words)."""
    words = []
    for start, end in offsets:
        if end <= start:
            words.append("")
            continue
        lo, hi = start, end
        while lo < hi and text[lo].isspace():
            lo += 1
        if lo == hi:
            words.append("")
            continue
        while lo > 0 and not text[lo - 1].isspace():
            lo -= 1
        while hi < len(text) and not text[hi].isspace():
            hi += 1
        words.append(normalize_word(text[lo:hi]))
    return words


@torch.no_grad()
def encode_corpus(
    model: Any, tokenizer: Any, saes: dict[int, Any], features: dict[int, list[int]], texts: list[str],
    max_length: int, batch_size: int, device: torch.device,
) -> list[EncodedText]:
    """One forward pass of the fine-tuned model per batch; SAE codes of the selected features only."""
    from lfp.models.loading import capture_mlp_outputs

    tokenizer.padding_side = "right"
    out: list[EncodedText] = []
    layers = sorted(saes)
    for start in tqdm(range(0, len(texts), batch_size), desc="explain corpus", leave=False):
        batch = texts[start : start + batch_size]
        enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_length, return_offsets_mapping=True)
        offsets = enc.pop("offset_mapping").tolist()
        with capture_mlp_outputs(model, layers) as captured:
            model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device))
        codes = {L: saes[L].encode(captured[L].float())[..., features[L]].cpu().numpy() for L in layers}
        lengths = enc["attention_mask"].sum(dim=1).tolist()
        for i, text in enumerate(batch):
            n = int(lengths[i])
            ids = enc["input_ids"][i, :n].tolist()
            out.append(EncodedText(
                tokens=decode_tokens(tokenizer, ids),
                words=token_words(text, [tuple(o) for o in offsets[i][:n]]),
                codes={L: codes[L][i, :n] for L in layers},
            ))
    return out


def _window(n_tokens: int, peak: int, size: int) -> tuple[int, int]:
    """A `size`-token window with the peak 3/4 of the way in: a causal model's context is before it."""
    start = max(0, peak - (size * 3) // 4)
    end = min(n_tokens, start + size)
    return max(0, end - size), end


def _context(text: EncodedText, values: np.ndarray, peak: int, size: int, max_act: float) -> Context:
    lo, hi = _window(len(text.tokens), peak, size)
    return Context(
        tokens=text.tokens[lo:hi], words=text.words[lo:hi],
        acts=scale_activations(values[lo:hi], max_act), peak=peak - lo,
    )


def feature_record(
    corpus: list[EncodedText], layer: int, column: int, feature: int, similarity: float,
    n_contexts: int, size: int, rng: np.random.Generator,
) -> FeatureRecord:
    """Top-n contexts (one per text, by the text's max activation) + n random held-out contexts."""
    per_text = [t.codes[layer][:, column] for t in corpus]
    maxima = np.array([v.max() if len(v) else 0.0 for v in per_text])
    max_act = float(maxima.max()) if len(maxima) else 0.0
    order = [int(i) for i in np.argsort(-maxima, kind="stable") if maxima[i] > 0][:n_contexts]
    if not order:  # a dead feature: nothing to explain or to score
        return FeatureRecord(layer, feature, similarity, max_act, [], [])
    top = [_context(corpus[i], per_text[i], int(per_text[i].argmax()), size, max_act) for i in order]
    taken = set(order)
    rest = [i for i in range(len(corpus)) if i not in taken and len(per_text[i])]
    random = []
    for i in rng.choice(rest, size=min(n_contexts, len(rest)), replace=False) if rest else []:
        pos = int(rng.integers(len(per_text[i])))
        random.append(_context(corpus[int(i)], per_text[int(i)], pos, size, max_act))
    return FeatureRecord(layer, feature, similarity, max_act, top, random)


def _levels(values: np.ndarray, max_act: float) -> np.ndarray:
    """Activations on Bills et al.'s 0..10 scale (as the explainer sees them)."""
    return np.rint(np.clip(values, 0.0, None) / max_act * MAX_ACT)


def _inactive_start(levels: np.ndarray, size: int, rng: np.random.Generator) -> int | None:
    """A random start of a window whose every token is 0 on the 0..10 scale; None if there is none."""
    width = min(size, len(levels))
    if width == 0:
        return None
    starts = np.flatnonzero(np.lib.stride_tricks.sliding_window_view(levels, width).max(axis=1) == 0)
    return int(rng.choice(starts)) if len(starts) else None


def heldout_contexts(
    corpus: list[EncodedText], layer: int, column: int, n_shown: int, n: int, size: int, rng: np.random.Generator,
) -> HeldOut:
    """Contexts never shown to the explainer, for the detection score: n//2 active ones (windows at
    the peak of the texts ranked just after the `n_shown` shown ones, peak >= 1 on the 0..10 scale)
    and n - n//2 inactive ones (random windows of other texts where every token is 0), shuffled."""
    per_text = [t.codes[layer][:, column] for t in corpus]
    maxima = np.array([v.max() if len(v) else 0.0 for v in per_text])
    max_act = float(maxima.max()) if len(maxima) else 0.0
    if max_act <= 0 or n < 2:
        return HeldOut([], [])
    ranked = [int(i) for i in np.argsort(-maxima, kind="stable") if maxima[i] > 0]
    positives = [i for i in ranked[n_shown:] if _levels(maxima[i : i + 1], max_act)[0] >= 1][: n // 2]
    contexts = [_context(corpus[i], per_text[i], int(per_text[i].argmax()), size, max_act) for i in positives]
    active = [True] * len(contexts)
    used = set(ranked[:n_shown]) | set(positives)
    for i in rng.permutation(len(corpus)):
        if len(active) - sum(active) == n - n // 2:
            break
        if int(i) in used:
            continue
        start = _inactive_start(_levels(per_text[i], max_act), size, rng)
        if start is not None:
            text, end = corpus[int(i)], min(len(per_text[i]), start + size)
            contexts.append(Context(tokens=text.tokens[start:end], words=text.words[start:end],
                                    acts=[0] * (end - start), peak=0))
            active.append(False)
    order = rng.permutation(len(contexts))
    return HeldOut([contexts[k] for k in order], [active[k] for k in order])


def activation_histogram(corpus: list[EncodedText], layer: int, column: int, bins: int = HIST_BINS) -> dict[str, Any]:
    """Histogram of the feature's positive activations over every corpus token, plus how many
    tokens there are and how many are active (> 0): the dashboards draw it."""
    values = np.concatenate([t.codes[layer][:, column] for t in corpus]) if corpus else np.zeros(0)
    active = values[values > 0]
    top = float(active.max()) if len(active) else 1.0
    counts, edges = np.histogram(active, bins=bins, range=(0.0, top))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts],
            "n_tokens": len(values), "n_active": len(active)}


def context_rows(contexts: list[Context]) -> list[dict[str, Any]]:
    """The contexts shown to the explainer, as features.jsonl stores them (tokens, 0..10 acts, peak)."""
    return [{"tokens": c.tokens, "acts": c.acts, "peak": c.peak} for c in contexts]


# --------------------------------------------------------------------------------------------
# detection scores
# --------------------------------------------------------------------------------------------


def _usable(row: dict[str, Any]) -> bool:
    """A feature whose explanation can be scored: it activates, and the LLM's reply was usable."""
    return bool(row["top_tokens"]) and not str(row["explanation"]).startswith(UNUSABLE)


def detection_scores(rows: list[dict[str, Any]], held: list[HeldOut], explainer: Any, seed: int) -> None:
    """Add `detection_score` (this explainer), `detection_score_shuffled` (another feature's
    explanation, a seeded derangement) and, for the LLM, `detection_score_offline` (the lexicon
    explainer's words on the same contexts) to every row."""
    if explainer.name == "openai":
        detector, text = LlmDetector(explainer.client), (lambda r: r["explanation"])
    else:
        detector, text = lexicon_detect, (lambda r: explanation_words(r["top_tokens"]))
    live = [i for i, r in enumerate(rows) if _usable(r) and held[i].contexts]
    donor = derangement(len(live), np.random.default_rng([seed, 17]))
    shuffled = {live[k]: live[donor[k]] for k in range(len(live))} if len(live) >= 2 else {}
    for i, (row, h) in enumerate(zip(rows, held)):
        row["detection_n_active"], row["detection_n_inactive"] = sum(h.active), len(h.active) - sum(h.active)
        row["detection_score"] = score(detector, text(row), h) if i in live else None
        row["detection_score_shuffled"] = score(detector, text(rows[shuffled[i]]), h) if i in shuffled else None
        if explainer.name == "openai":
            row["detection_score_offline"] = score(lexicon_detect, explanation_words(row["top_tokens"]), h) if h.contexts else None


def detection_summary(rows: list[dict[str, Any]], explainer: Any, n_resamples: int, seed: int) -> dict[str, Any]:
    """explain.json: mean detection score with a bootstrap CI over features, for this explainer
    (`explanation_score_*` and `explanation_score_{name}_*`), the shuffled baseline and, for the
    LLM, the lexicon explainer on the same contexts."""
    def col(key: str) -> list[float | None]:
        return [r.get(key) for r in rows]

    out = {"explainer": explainer.name, "detection_detector": "llm" if explainer.name == "openai" else "lexicon"}
    out |= summarize_scores(col("detection_score"), "explanation_score", n_resamples, seed)
    out |= summarize_scores(col("detection_score"), f"explanation_score_{explainer.name}", n_resamples, seed)
    out |= summarize_scores(col("detection_score_shuffled"), "explanation_score_shuffled", n_resamples, seed)
    if explainer.name == "openai":
        out |= summarize_scores(col("detection_score_offline"), "explanation_score_offline", n_resamples, seed)
    return out


# --------------------------------------------------------------------------------------------
# stage
# --------------------------------------------------------------------------------------------


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
    selected = selected_features(model, task, layers, cfg.top_k_features)
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
        texts = load_corpus(params)
        corpus = encode_corpus(lm, tokenizer, saes, {L: [f for f, _ in selected[L]] for L in layers}, texts,
                               cfg.max_length, cfg.batch_size, device)
        rng = np.random.default_rng(params.seed)
        rows, held = [], []
        for L in layers:
            for column, (feature, sim) in enumerate(tqdm(selected[L], desc=f"explain layer {L}", leave=False)):
                record = feature_record(corpus, L, column, feature, sim, cfg.n_contexts, cfg.context_tokens, rng)
                result = explainer.explain(record)
                rows.append({
                    "layer": L, "feature": feature, "similarity": sim, "explanation": result.explanation,
                    "related": result.related, "backend": explainer.name, "top_tokens": result.top_tokens,
                    "simulation_score": result.simulation_score, "max_activation": record.max_activation,
                    "contexts": context_rows(record.top), "activation_histogram": activation_histogram(corpus, L, column),
                })
                # its own generator: the stage's `rng` (random contexts of later features) stays as it was
                held.append(heldout_contexts(corpus, L, column, cfg.n_contexts, cfg.detection_contexts, cfg.context_tokens,
                                             np.random.default_rng([params.seed, L, feature])))
        summary = summarize(rows, explainer, len(texts))
        # which model wrote the explanations (GGUF file + sha256 for a local server), copied into validate.json
        summary["llm_model"] = explainer.client.model_id if explainer.name != "offline" else "none (offline lexicon explainer)"
        if cfg.detection_contexts:
            detection_scores(rows, held, explainer, params.seed)
            summary |= detection_summary(rows, explainer, cfg.bootstrap, params.seed)
        out_dir = paths.report_dir(model, task)
        io.write_jsonl(out_dir / "features.jsonl", rows)
        run_.write_metrics(out_dir / "explain.json", summary)
        run_.log_artifact(out_dir / "features.jsonl")

