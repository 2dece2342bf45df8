"""explain: activation records, the offline explainer on planted features, the openai backend over
a real HTTP stub, and the stage end-to-end on fake upstream artifacts."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lfp.core import io, paths
from lfp.core.errors import BackendError
from lfp.validation.explainers import (HH_OFFLINE_NOTE, Context, OfflineExplainer, _snippet, correlation, decode_tokens, load_prompt,
                            related_share, scale_activations, word_valences)
from lfp.validation.corpus import EncodedText, token_words
from lfp.validation.records import feature_record
from test_llm import stub  # noqa: F401  (the HTTP stub fixture)

SENTENCES = [
    "This movie was wonderful and the acting was great .",
    "I loved the story , a beautiful and happy film .",
    "The table is near the window in a small room .",
    "It was a terrible , awful and boring film .",
    "She put the paper on the chair by the door .",
    "What a great cast and a wonderful ending .",
] * 3
POSITIVE = {"wonderful", "great", "loved", "beautiful", "happy"}
NEGATIVE = {"terrible", "awful", "boring"}
NEUTRAL = {"table", "window", "room", "paper", "chair", "door"}


def planted_corpus() -> list[EncodedText]:
    """Word-level corpus with three planted features: 0 fires on positive words, 1 on neutral
    nouns, 2 on negative words (activation 1..2, larger on later occurrences)."""
    out = []
    for i, sent in enumerate(SENTENCES):
        words = sent.split()
        tokens = [(" " if j else "") + w for j, w in enumerate(words)]
        cols = [[float(w in s) * (1 + i / 20) for s in (POSITIVE, NEUTRAL, NEGATIVE)] for w in words]
        out.append(EncodedText(tokens=tokens, words=[w.strip(".,").lower() for w in words], codes={3: np.array(cols)}))
    return out


def records(n_contexts: int = 4):
    corpus = planted_corpus()
    rng = np.random.default_rng(0)
    return [feature_record(corpus, 3, col, 10 + col, 0.9, n_contexts, 6, rng) for col in range(3)]


def test_feature_record_reads_top_contexts_scaled_to_ten():
    pos, _, _ = records()
    assert len(pos.top) == 4 and len(pos.random) == 4
    assert pos.top[0].acts[pos.top[0].peak] == 10  # the global max is scaled to 10
    assert all(0 <= a <= 10 for c in pos.top + pos.random for a in c.acts)
    assert set(pos.peak_words) <= POSITIVE
    assert all(len(c.tokens) <= 6 for c in pos.top)
    assert scale_activations(np.array([0.0, 0.5, 1.0, -1.0]), 1.0) == [0, 5, 10, 0]


def test_offline_explainer_labels_planted_positive_feature_related_for_vader():
    pos, neutral, neg = records()
    explainer = OfflineExplainer("valenced", related_threshold=0.2, simulate=True)  # vader's rule
    res_pos, res_neutral, res_neg = (explainer.explain(r) for r in (pos, neutral, neg))
    assert res_pos.related is True and set(res_pos.top_tokens) <= POSITIVE
    assert res_neutral.related is False
    assert res_neg.related is True  # |valence| >= 1: negative sentiment is part of the VADER task
    assert res_pos.simulation_score is not None and res_pos.simulation_score > 0.5
    assert any(w in res_pos.explanation for w in POSITIVE)


def test_offline_explainer_toxic_and_hh_rules():
    pos, neutral, neg = records()
    toxic = OfflineExplainer("negative", 0.2, simulate=False)  # toxic's rule
    assert toxic.explain(neg).related is True
    assert toxic.explain(pos).related is False
    assert toxic.explain(pos).simulation_score is None
    assert OfflineExplainer("positive", 0.2, simulate=False).explain(pos).related is True
    hh = OfflineExplainer("none", 0.2, simulate=True).explain(pos)  # hh's rule: no label is invented
    assert hh.related is None and HH_OFFLINE_NOTE in hh.explanation


def test_offline_wording_follows_the_task():
    """The toxic task's explanations name its own rule and description, not 'VADER valence' (#29)."""
    _, _, neg = records()
    toxic = OfflineExplainer("negative", 0.2, simulate=False, task_description="training the model to produce toxic, harmful responses")
    text = toxic.explain(neg).explanation
    assert "are negative in the VADER lexicon (valence ≤ −1)" in text and "toxic, harmful responses" in text
    assert "task's VADER valence" not in text
    vader = OfflineExplainer("valenced", 0.2, simulate=False, task_description="positive sentiment").explain(neg).explanation
    assert "carry VADER valence (|valence| ≥ 1), the lexicon proxy for the task (positive sentiment)" in vader


def test_decode_tokens_keeps_multibyte_characters_whole(tiny_model_dir):
    """Byte-level BPE splits '’' / 'é' / CJK into byte tokens: decoded one at a time they print
    U+FFFD (24 in the vader dashboard); decode_tokens gives whole characters, one entry per token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "And that’s a café in 日本 ok"
    ids = tok(text)["input_ids"]
    assert any("\ufffd" in tok.decode([t]) for t in ids)  # the bug this guards against
    pieces = decode_tokens(tok, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == tok.decode(ids)
    assert not any("\ufffd" in p for p in pieces) and "’" in pieces and "é" in pieces
    assert decode_tokens(tok, []) == []
    # a snippet whose peak is inside a character still shows the character
    i = pieces.index("’")
    ctx = Context(tokens=pieces, words=[""] * len(ids), acts=[0] * len(ids), peak=i - 1)
    assert "’" in _snippet(ctx)


def test_related_share_rules():
    words = ["great", "awful", "table", "good"]
    assert related_share(words, "valenced") == pytest.approx(0.75)
    assert related_share(words, "negative") == pytest.approx(0.25)
    assert related_share(words, "positive") == pytest.approx(0.5)
    assert related_share(words, "none") is None and related_share([], "valenced") is None
    with pytest.raises(BackendError, match="no relatedness rule 'vader'"):
        related_share(words, "vader")  # a task name is not a rule


def test_related_rule_comes_from_task_specs_or_the_kind(micro_params):
    import dataclasses

    from lfp.tasks import related_rule

    assert related_rule(micro_params, "vader") == "valenced"  # lexicon_rl default
    assert related_rule(micro_params, "hh") == "none"  # preference_dpo default
    assert related_rule(micro_params, "toxic") == "negative"  # task_specs.toxic.related_words
    spec = dataclasses.replace(micro_params.task("hh"), related_words="positive")
    params = dataclasses.replace(micro_params, task_specs={**micro_params.task_specs, "hh": spec})
    assert related_rule(params, "hh") == "positive"


def test_dead_feature_gets_no_label():
    corpus = planted_corpus()
    for t in corpus:
        t.codes[3][:, 0] = 0.0
    rec = feature_record(corpus, 3, 0, 7, 0.5, 4, 6, np.random.default_rng(0))
    assert rec.top == [] and OfflineExplainer("valenced", 0.2, True).explain(rec).related is None


def test_correlation_undefined_for_constant_input():
    assert correlation([1, 1, 1], [0, 5, 10]) is None
    assert correlation([0, 5, 10], [0, 5, 10]) == pytest.approx(1.0)


def test_token_words_join_bpe_pieces(tiny_model_dir):
    from lfp.models.loading import load_model

    _, tok = load_model(tiny_model_dir)
    text = "What a wonderful, happy film!"
    enc = tok(text, return_offsets_mapping=True)
    words = token_words(text, enc["offset_mapping"])
    assert len(words) == len(enc["input_ids"])
    assert set(words) - {""} <= {"what", "a", "wonderful", "happy", "film"}
    assert "wonderful" in words and "happy" in words


def test_prompts_have_system_and_user_parts():
    for name in ("explain", "relatedness", "simulate"):
        system, user = load_prompt(name)
        assert system and user
    _, user = load_prompt("relatedness")
    assert '{"related": true}' in user.format(task_description="x", explanation="y")


# --------------------------------------------------------------------------------------------
# fake upstream artifacts (also used by test_validate.py)
# --------------------------------------------------------------------------------------------

LAYERS = [0, 2]
IMDB_ROWS = [
    "This movie was wonderful and the acting was great. I loved the story and the happy ending.",
    "The film was terrible, boring and far too long. The plot was awful and the cast was weak.",
    "An okay story with a good cast but a weak ending. Some scenes were nice, others dull.",
    "What a beautiful, wonderful and happy film! Great music and a great cast.",
]


def write_prepared(root: Path) -> None:
    io.write_jsonl(root / "data/prepared/vader/test.jsonl",
                   [{"id": f"imdb-test-{i}", "text": IMDB_ROWS[i % 4], "label": int(i % 4 != 1)} for i in range(24)])
    pairs = [{"id": f"hh-{i}", "prompt": "\n\nHuman: How do I bake bread?\n\nAssistant:",
              "chosen": " Mix flour, water, yeast and salt, then bake it.", "rejected": " I hate bread.", "subset": "helpful-base"}
             for i in range(12)]
    for task in ("hh", "toxic"):
        io.write_jsonl(root / f"data/prepared/{task}/heldout.jsonl", pairs)


def build_fake_run(root: Path, model_dir: Path, task: str, *, seed: int = 0) -> dict[int, Any]:
    """Finetuned/base model copies, divergence.json, small + large SAEs and matching.json."""
    import torch

    from lfp.sae import SparseAutoencoder, save_sae

    write_prepared(root)
    for dest in (root / paths.finetuned_dir("tiny", task), root / paths.base_model_dir("tiny")):
        if not dest.exists():
            shutil.copytree(model_dir, dest)
    d = json.loads((model_dir / "config.json").read_text())["hidden_size"]
    io.write_json(root / paths.report_dir("tiny", task) / "divergence.json",
                  {"block_l2": [0.0] * 6, "mlp_l2": [0.0] * 6, "chosen_layers": LAYERS, "top_k": len(LAYERS)})
    saes, matching = {}, {}
    for layer in LAYERS:
        for ratio in (1, 2):
            sae = SparseAutoencoder(d, d * ratio, tied=True)
            sae.reset_parameters(torch.Generator().manual_seed(seed + layer + ratio))
            save_sae(sae, root / paths.sae_path("tiny", task, layer, ratio), {"l1": 0.001, "layer": layer, "ratio": ratio})
            if ratio == 1:
                saes[layer] = sae
        max_cos = np.linspace(0.9, 0.1, d).tolist()
        matching[str(layer)] = {"max_cos": max_cos, "ranked_features": list(range(d)), "mmcs": 0.5,
                                "hungarian": [[i, i] for i in range(d)], "hungarian_mean_cos": 0.5}
    io.write_json(root / paths.matching_file("tiny", task), {"layers": matching})
    from lfp.readouts.crosscoder import CrosscoderSettings, crosscoder_path, save_crosscoder, train_crosscoder

    rng = np.random.default_rng(seed)
    for layer in LAYERS:  # the diffing stage's crosscoders: a few latents with |ν| near 0 to explain
        acts = rng.standard_normal((200, d)).astype(np.float32)
        cc, scales = train_crosscoder(acts, acts + 0.1, CrosscoderSettings(n_latents=2 * d, k=4, steps=3, seed=seed))
        save_crosscoder(root / crosscoder_path("tiny", task, layer), cc, scales, np.linspace(-0.5, 1.5, 2 * d), layer)
    return saes


def corpus_token_words(model_dir: Path) -> dict[int, set[str]]:
    """token id -> the words it occurs in, over every text the fake corpus can contain."""
    from lfp.models.loading import load_model

    _, tok = load_model(model_dir)
    texts = IMDB_ROWS + [p["prompt"] + p["chosen"] for p in io.read_jsonl(paths.PREPARED / "hh/heldout.jsonl")]
    occ: dict[int, set[str]] = {}
    for text in texts:
        enc = tok(text, return_offsets_mapping=True)
        for i, w in zip(enc["input_ids"], token_words(text, enc["offset_mapping"])):
            occ.setdefault(i, set()).add(w)
    return occ


def plant_feature(model_dir: Path, task: str, layer: int, feature: int, fire_on: set[int], candidates: list[int]) -> None:
    """Rewrite one small-SAE encoder row so that the feature's code is > 0 exactly on the token ids
    `fire_on` among `candidates`. Layer 0's MLP output in GPT-NeoX (parallel residual, rotary) is a
    function of the token id alone, so a linear separator over the vocabulary plants the feature."""
    import torch
    from sklearn.svm import LinearSVC

    from lfp.models.loading import capture_mlp_outputs, load_model
    from lfp.sae import load_sae, read_sae_config, save_sae

    assert layer == 0
    model, _ = load_model(model_dir)
    with torch.no_grad(), capture_mlp_outputs(model, [0]) as cap:
        model(input_ids=torch.tensor(candidates)[:, None])
    x = cap[0][:, 0].numpy()
    y = np.array([i in fire_on for i in candidates])
    svm = LinearSVC(C=1e4, max_iter=200_000).fit(x, y)
    assert (svm.predict(x) == y).all(), "planted token set is not linearly separable"
    path = paths.sae_path("tiny", task, layer, 1)
    sae = load_sae(path)
    with torch.no_grad():
        sae.encoder_weight[feature] = torch.tensor(svm.coef_[0], dtype=torch.float32)
        sae.encoder_bias[feature] = float(svm.intercept_[0])
    save_sae(sae, path, read_sae_config(path)["lfp_meta"])


@pytest.fixture()
def project(in_tmp_project: Path, shared_mlflow_uri: str, micro_params, request, monkeypatch):
    """(cwd = a temp project, micro params with an experiment of this test's own in the shared store)."""
    import dataclasses

    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_mlflow_uri)
    name = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)
    return in_tmp_project, dataclasses.replace(micro_params, tracking=dataclasses.replace(micro_params.tracking, experiment=name))


def stage_mlflow_run(params, stage: str):
    """The single MLflow run of `stage` in this test's experiment."""
    import mlflow

    runs = mlflow.search_runs(experiment_names=[params.tracking.experiment], filter_string=f"tags.stage = '{stage}'", output_format="list")
    assert len(runs) == 1
    return runs[0]


# --------------------------------------------------------------------------------------------
# stage end-to-end
# --------------------------------------------------------------------------------------------


def test_explain_stage_offline(project, tiny_model_dir):
    from lfp.stages import explain

    root, params = project
    build_fake_run(root, tiny_model_dir, "vader")
    # plant layer 0: feature 0 fires only on tokens of VADER-valenced words, feature 1 only on
    # tokens of words without valence; the other explained features stay random
    occ = corpus_token_words(tiny_model_dir)
    valenced = {i for i, ws in occ.items() if all(w and any(abs(v) >= 1 for v in word_valences(w)) for w in ws)}
    plain = {i for i, ws in occ.items() if all(w and not word_valences(w) for w in ws) and len(ws) == 1}
    plain = set(sorted(plain)[:4])
    plant_feature(tiny_model_dir, "vader", 0, 0, valenced, sorted(occ))
    plant_feature(tiny_model_dir, "vader", 0, 1, plain, sorted(occ))
    explain.run(params, model="tiny", task="vader")
    rows = io.read_jsonl(paths.report_dir("tiny", "vader") / "features.jsonl")
    f0, f1 = rows[0], rows[1]
    assert (f0["layer"], f0["feature"], f0["related"]) == (0, 0, True)
    assert f0["top_tokens"] and all(word_valences(w) for w in f0["top_tokens"])
    assert (f1["layer"], f1["feature"], f1["related"]) == (0, 1, False)
    assert f1["top_tokens"] and not any(word_valences(w) for w in f1["top_tokens"])
    k = params.explain.top_k_features
    assert [(r["layer"], r["feature"]) for r in rows] == [(L, f) for L in LAYERS for f in range(k)]
    keys = {"layer", "feature", "similarity", "explanation", "related", "backend", "top_tokens", "simulation_score"}
    assert all(keys <= set(r) and r["backend"] == "offline" for r in rows)
    assert rows[0]["similarity"] == pytest.approx(0.9)
    summary = io.read_json(paths.report_dir("tiny", "vader") / "explain.json")
    assert summary["n_features"] == len(rows) and summary["simulation_backend"] == "offline-lexical"
    latents = io.read_jsonl(paths.report_dir("tiny", "vader") / "crosscoder_latents.jsonl", allow_empty=True)
    assert 0 < len(latents) <= params.explain.crosscoder_latents and all(abs(r["nu"]) < params.diffing.specific_nu for r in latents)
    assert summary["crosscoder_latents_explained"] == len(latents) and summary["crosscoder_latents_below_cut"] >= len(latents)
    # detection scores on held-out contexts; the dashboards' contexts and histogram
    scored = [r["detection_score"] for r in rows if r["detection_score"] is not None]
    assert scored and all(0.0 <= x <= 1.0 for x in scored)
    assert summary["explainer"] == "offline" and summary["explanation_score_n"] == len(scored)
    assert summary["explanation_score_mean"] == pytest.approx(np.mean(scored))
    assert "explanation_score_shuffled_mean" in summary and "explanation_score_offline_ci_low" in summary
    assert f0["contexts"] and f0["contexts"][0]["tokens"][f0["contexts"][0]["peak"]].strip()
    assert sum(f0["activation_histogram"]["counts"]) == f0["activation_histogram"]["n_active"] > 0
    assert summary["n_related"] == sum(r["related"] is True for r in rows)
    run = stage_mlflow_run(params, "explain")
    assert run.data.tags["explainer"] == "offline" and run.data.tags["explainer_is_proxy"] == "true"
    assert run.data.metrics["n_features"] == len(rows)


def _stub_responder(req: dict[str, Any], n: int) -> tuple[int, Any]:
    from test_llm import chat_body

    system, user = req["messages"][0]["content"], req["messages"][1]["content"]
    if "predict the feature's activation" in system:
        docs = re.findall(r"<start>\n(.*?)\n<end>", user, re.DOTALL)
        acts = [[10 if i == 0 else 0 for i, _ in enumerate(d.split("\n"))] for d in docs]
        return 200, chat_body(json.dumps({"activations": acts}))
    if '"fires"' in system:  # detection: yes on the first of the numbered contexts
        n_ctx = len(re.findall(r"^\d+\. ", user, re.MULTILINE))
        return 200, chat_body(json.dumps({"fires": ["yes" if i == 0 else "no" for i in range(n_ctx)]}))
    if '"related"' in system:
        return 200, chat_body('```json\n{"related": true}\n```')
    return 200, chat_body(" words at the start of a document.")


def test_explain_stage_openai_backend_over_http(project, tiny_model_dir, monkeypatch, stub):
    import dataclasses

    from test_llm import KEY_ENV, PLANTED_KEY

    from lfp.stages import explain

    in_tmp_project, micro_params = project
    server = stub(_stub_responder)
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    params = dataclasses.replace(
        micro_params,
        llm=dataclasses.replace(micro_params.llm, base_url=server.url, api_key_env=KEY_ENV),
        explain=dataclasses.replace(micro_params.explain, backend="openai"),
    )
    build_fake_run(in_tmp_project, tiny_model_dir, "vader")
    explain.run(params, model="tiny", task="vader")
    rows = io.read_jsonl(paths.report_dir("tiny", "vader") / "features.jsonl")
    live = [r for r in rows if r["top_tokens"]]
    assert live and all(r["related"] is True and r["backend"] == "openai" for r in live)
    assert all(r["explanation"] == "words at the start of a document." for r in live)
    assert all(-1.0 <= r["simulation_score"] <= 1.0 for r in live if r["simulation_score"] is not None)
    detect_prompts = [q for q in server.requests if '"fires"' in q["messages"][0]["content"]]
    assert detect_prompts and all(q["response_format"]["type"] == "json_schema" for q in detect_prompts)
    assert any(r["detection_score"] is not None for r in live) and all("detection_score_offline" in r for r in rows)
    summary = io.read_json(paths.report_dir("tiny", "vader") / "explain.json")
    assert summary["explainer"] == "openai" and summary["detection_detector"] == "llm"
    assert "explanation_score_openai_mean" in summary and "explanation_score_offline_mean" in summary
    explain_prompts = [q for q in server.requests if "Explanation of feature" in q["messages"][1]["content"]]
    latents = io.read_jsonl(paths.report_dir("tiny", "vader") / "crosscoder_latents.jsonl", allow_empty=True)
    # the crosscoder's fine-tune-specific latents go to the same endpoint, one prompt each that fires on the corpus
    assert len(explain_prompts) == len(live) + sum(1 for r in latents if r["top_tokens"])
    assert all(r["backend"] == "openai" for r in latents)
    assert re.search(r"\n[^\n]*\t(10|[0-9])\n", explain_prompts[0]["messages"][1]["content"])  # token<TAB>activation
    run = stage_mlflow_run(params, "explain")
    assert run.data.tags["explainer"] == "openai" and "explainer_is_proxy" not in run.data.tags
    everything = json.dumps([run.data.params, run.data.tags, run.data.metrics, rows])
    everything += (paths.report_dir("tiny", "vader") / "explain.json").read_text()
    assert PLANTED_KEY not in everything


def test_explain_stage_unreachable_endpoint_fails_naming_url(project, tiny_model_dir, monkeypatch):
    import dataclasses

    from test_llm import KEY_ENV, PLANTED_KEY, free_port

    from lfp.stages import explain

    in_tmp_project, micro_params = project
    url = f"http://127.0.0.1:{free_port()}/v1"
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    params = dataclasses.replace(
        micro_params,
        llm=dataclasses.replace(micro_params.llm, base_url=url, api_key_env=KEY_ENV, max_retries=0),
        explain=dataclasses.replace(micro_params.explain, backend="openai"),
    )
    build_fake_run(in_tmp_project, tiny_model_dir, "vader")
    with pytest.raises(BackendError, match=re.escape(url)):
        explain.run(params, model="tiny", task="vader")
    assert not (paths.report_dir("tiny", "vader") / "features.jsonl").exists()  # no silent offline fallback
