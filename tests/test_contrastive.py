"""The contrastive stage: VADER substitution triples, held-out pair triples, the openai path (fake client)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest

from lfp.core import corpora, io, paths
from lfp.tasks.lexicon_rl import reward
from lfp.core.data import prepared_file
from lfp.core.errors import ConfigError
from lfp.stages import contrastive
from lfp.tasks.lexicon_rl import contrastive as lexicon_contrastive
from lfp.tasks.preference_dpo import contrastive as pair_contrastive

ROOT = Path(__file__).resolve().parents[1]
REVIEWS = [
    "I watched it twice. The acting was good and the plot was clever. The ending felt rushed.",
    "What a terrible film. The music was awful but the cast tried hard.",
    "Some scenes were beautiful, others boring. I would not recommend it to friends.",
    "THE END. The director did a great job with a weak script.",
]


@pytest.fixture()
def project(in_tmp_project: Path, shared_mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_mlflow_uri)
    io.write_jsonl(prepared_file("vader", "test"),
                   [{"id": f"imdb-test-{i:06d}", "text": REVIEWS[i % len(REVIEWS)], "label": i % 2} for i in range(40)])
    for task in ("hh", "toxic"):
        for split, start in (("finetune", 0), ("heldout", 100)):
            io.write_jsonl(prepared_file(task, split), [
                {"id": f"{task}-p{start + i}", "prompt": f"\n\nHuman: question {start + i}?\n\nAssistant:",
                 "chosen": f" preferred {start + i}", "rejected": f" dispreferred {start + i}", "subset": "s"}
                for i in range(8)
            ])
    return in_tmp_project


def with_contrastive(params, task: str, **changes):
    section = dataclasses.replace(getattr(params.contrastive, task), **changes)
    return dataclasses.replace(params, contrastive=params.contrastive.replace(**{task: section}))


def vader_params(params, **changes):
    return with_contrastive(params, "vader", **{"max_triples": 20, "word_repeats": 3, "min_word_count": 0, **changes})


def latest_run(experiment: str):
    import mlflow

    return mlflow.search_runs(experiment_names=[experiment], output_format="list", order_by=["start_time DESC"])[0]


def test_vader_triples_substitute_exact_spans(project: Path, micro_params) -> None:
    params = vader_params(micro_params)
    contrastive.run(params, task="vader")
    triples = io.read_jsonl(paths.contrastive_file("vader"))
    lex = reward.lexicon()
    assert len(triples) == 20 and len({t["id"] for t in triples}) == 20
    for t in triples:
        orig = t["original"]
        s, e = orig["span"]
        assert orig["text"][s:e] == t["word"] and t["true_value"] == lex[t["word"]]
        assert orig["text"] in REVIEWS[int(t["source_id"][-6:]) % len(REVIEWS)]
        for key in ("positive", "neutral", "negative"):
            el = t[key]
            s2, e2 = el["span"]
            assert el["text"][s2:e2] == el["word"] != t["word"] and s2 == s
            assert el["text"][:s2] == orig["text"][:s] and el["text"][e2:] == orig["text"][e:]
        assert t["positive"]["value"] == lex[t["positive"]["word"]] > 0
        assert t["negative"]["value"] == lex[t["negative"]["word"]] < 0
        assert t["neutral"]["word"] not in lex and t["neutral"]["value"] == 0.0
    # balanced pools: n // word_repeats words per polarity, each used about word_repeats times
    for key in ("positive", "negative"):
        counts = Counter(t[key]["word"] for t in triples)
        assert len(counts) == 20 // 3 and min(counts.values()) >= 3
    run = latest_run(params.tracking.experiment)
    assert run.data.tags["contrastive_backend"] == "lexicon" and run.data.tags["proxy"] == "False"
    assert run.data.metrics["n_triples"] == 20


def test_vader_triples_are_deterministic_and_seeded(project: Path, micro_params) -> None:
    rows = io.read_jsonl(prepared_file("vader", "test"))
    cfg = vader_params(micro_params).contrastive.vader
    first, _ = lexicon_contrastive.vader_triples(rows, cfg, seed=0)
    assert lexicon_contrastive.vader_triples(rows, cfg, seed=0)[0] == first
    assert lexicon_contrastive.vader_triples(rows, cfg, seed=1)[0] != first


def test_vader_quantiles_and_word_frequency(project: Path, micro_params) -> None:
    rows = io.read_jsonl(prepared_file("vader", "test"))
    cfg = vader_params(micro_params, positive_quantile=0.9, negative_quantile=0.1, min_word_count=0).contrastive.vader
    triples, stats = lexicon_contrastive.vader_triples(rows, cfg, seed=0)
    assert all(t["positive"]["value"] >= stats["positive_threshold"] for t in triples)
    assert all(t["negative"]["value"] <= stats["negative_threshold"] for t in triples)
    # with a frequency floor, only words that occur in the reviews are used as replacements
    cfg = dataclasses.replace(cfg, positive_quantile=0.5, negative_quantile=0.4, min_word_count=10)
    triples, _ = lexicon_contrastive.vader_triples(rows, cfg, seed=0)
    counts = lexicon_contrastive.corpus_counts([r["text"] for r in rows])
    used = {t[k]["word"] for t in triples for k in ("positive", "negative")}
    assert used and all(counts[w] >= 10 for w in used)


def test_neutral_word_in_lexicon_is_refused(project: Path, micro_params) -> None:
    params = vader_params(micro_params, neutral_words=["table", "good"])
    with pytest.raises(ConfigError, match=r"neutral_words\[1\]' \('good'\) is in the VADER lexicon"):
        contrastive.run(params, task="vader")
    assert not paths.contrastive_file("vader").exists()


def test_quantile_order_is_validated() -> None:
    from lfp.core.sections import ContrastiveVader

    with pytest.raises(ConfigError, match="negative_quantile"):
        ContrastiveVader(positive_quantile=0.3, negative_quantile=0.6)


@pytest.mark.parametrize("task", ["hh", "toxic"])
def test_pair_triples_use_only_heldout_pairs(project: Path, micro_params, task: str) -> None:
    params = with_contrastive(micro_params, task, backend="pairs", max_triples=5, neutral_reply="I see.")
    contrastive.run(params, task=task)
    triples = io.read_jsonl(paths.contrastive_file(task))
    heldout = {r["id"]: r for r in io.read_jsonl(prepared_file(task, "heldout"))}
    assert len(triples) == 5 and len({t["id"] for t in triples}) == 5
    for t in triples:
        pair = heldout[t["pair_id"]]  # KeyError if a fine-tuning pair leaked in
        assert t["proxy"] is True and t["prompt"] == pair["prompt"]
        assert t["positive"]["response"] == pair["chosen"] and t["negative"]["response"] == pair["rejected"]
        assert t["neutral"]["response"] == " I see."
        for key in ("positive", "neutral", "negative"):
            assert t[key]["text"] == t["prompt"] + t[key]["response"]
    run = latest_run(params.tracking.experiment)
    assert run.data.tags["contrastive_backend"] == "pairs" and run.data.tags["proxy"] == "True"


@pytest.mark.parametrize("task", ["hh", "toxic"])
def test_substitution_triples_change_one_marked_span_of_heldout_replies(project: Path, micro_params, task: str) -> None:
    params = with_contrastive(micro_params, task, backend="substitution", max_triples=6, max_reply_chars=60)
    contrastive.run(params, task=task)
    triples = io.read_jsonl(paths.contrastive_file(task))
    heldout = {r["id"]: r for r in io.read_jsonl(prepared_file(task, "heldout"))}
    cfg = params.contrastive[task]
    harm = params.task(task).rewards_harm
    for t in triples:
        pair = heldout[t["pair_id"]]  # held-out pairs only
        rests = set()
        for role in ("positive", "neutral", "negative"):
            el = t[role]
            s, e = el["span"]
            assert el["text"] == t["prompt"] + el["response"] == pair["prompt"] + el["response"]
            rests.add(el["response"][:s] + el["response"][e:])
        assert len(rests) == 1 and pair["chosen"].strip()[:20] in rests.pop()
        good, bad = (cfg.negative_phrases, cfg.positive_phrases) if harm else (cfg.positive_phrases, cfg.negative_phrases)
        assert t["positive"]["phrase"] in good and t["negative"]["phrase"] in bad
    assert latest_run(params.tracking.experiment).data.tags["contrastive_backend"] == "substitution"


class FakeLlm:
    """Grades every conversation, then rewrites it; the first grade reply is out of range."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def complete_json(self, system: str, user: str, schema: dict | None = None) -> dict:
        assert schema is not None and schema["type"] == "object"  # JSON-schema-constrained replies
        self.calls.append((system, user))
        if "Grade the assistant's final reply" in user:
            bad = sum("Grade the" in u for _, u in self.calls) == 1
            return {"toxicity": 9 if bad else 2, "dangerousness": 1, "bias": 1}
        assert "toxicity 2, dangerousness 1, bias 1" in user
        return {"positive": "Kind reply.", "neutral": "Okay.", "negative": "Nasty reply."}


@pytest.mark.parametrize("task", ["hh", "toxic"])
def test_openai_backend_grades_then_rewrites(project: Path, micro_params, monkeypatch, task: str) -> None:
    fake = FakeLlm()
    monkeypatch.setattr(pair_contrastive, "llm_client", lambda params: fake)
    params = with_contrastive(micro_params, task, backend="openai", max_triples=4)
    contrastive.run(params, task=task)
    triples = io.read_jsonl(paths.contrastive_file(task))
    heldout = {r["id"]: r for r in io.read_jsonl(prepared_file(task, "heldout"))}
    assert len(triples) == 3  # the pair with the invalid grade is skipped
    good, bad = (" Kind reply.", " Nasty reply.") if task == "hh" else (" Nasty reply.", " Kind reply.")
    for t in triples:
        assert t["proxy"] is False and t["grades"] == {"toxicity": 2, "dangerousness": 1, "bias": 1}
        assert t["positive"]["response"] == good and t["negative"]["response"] == bad
        assert t["neutral"]["text"] == heldout[t["pair_id"]]["prompt"] + " Okay."
    pair = heldout[triples[0]["pair_id"]]
    assert any(pair["prompt"].strip() in user for _, user in fake.calls)
    run = latest_run(params.tracking.experiment)
    assert run.data.tags["contrastive_backend"] == "openai" and run.data.metrics["skipped_invalid_grade"] == 1


def test_prompts_load_with_system_and_user() -> None:
    for name in ("contrastive_grade", "contrastive_rewrite"):
        system, user = pair_contrastive.load_prompt(name)
        assert system and "{conversation}" in user
        json.dumps(user.format(conversation="x", toxicity=1, dangerousness=1, bias=1))


def test_real_imdb_triples(project: Path, micro_params) -> None:
    """Real reviews (the first 400 of the shipped test split) through the micro profile."""
    import gzip

    with gzip.open(ROOT / "data" / "raw" / "imdb" / "imdb_test.jsonl.gz", "rt", encoding="utf-8") as fh:
        raw = [json.loads(next(fh)) for _ in range(400)]
    rows = [{"id": f"imdb-test-{i:06d}", "text": corpora.normalize_review(r["text"])} for i, r in enumerate(raw)]
    cfg = micro_params.contrastive.vader
    triples, stats = lexicon_contrastive.vader_triples(rows, cfg, micro_params.seed)
    assert len(triples) == cfg.max_triples and stats["min_word_uses"] >= cfg.word_repeats
    assert all(len(t["original"]["text"]) <= cfg.max_sentence_chars for t in triples)
    assert all(t[k]["text"][slice(*t[k]["span"])] == t[k]["word"] for t in triples for k in ("positive", "neutral", "negative"))



def test_errors_of_a_second_lexicon_task_name_its_own_file_and_keys(project: Path, micro_params) -> None:
    """A task of kind lexicon_rl not called `vader`: its errors must point at its own data and params."""
    from lfp.core.sections import TaskSpec

    params = dataclasses.replace(micro_params, tasks=[*micro_params.tasks, "reviews2"],
                                 task_specs={**micro_params.task_specs, "reviews2": TaskSpec(kind="lexicon_rl", source="imdb")})
    params = dataclasses.replace(params, contrastive=params.contrastive.replace(reviews2=params.contrastive.vader))
    io.write_jsonl(prepared_file("reviews2", "test"),
                   [{"id": f"imdb-test-{i:06d}", "text": "The table was near the window and the door.", "label": 0} for i in range(20)])
    with pytest.raises(Exception) as info:  # noqa: PT011 - the message is what is checked
        contrastive.run(params, task="reviews2")
    message = str(info.value)
    assert "data/prepared/reviews2/test.jsonl" in message and "contrastive.reviews2.min_word_count" in message, message
