"""`lfp contrastive --task T`: (positive, neutral, negative) triples for the probe (paper §3.3).

vader — from IMDB *test* reviews (`data/prepared/vader/test.jsonl`), at most one sentence per
review (reviews and sentences visited in seeded order). A sentence qualifies when it is at most
`max_sentence_chars` long and contains a VADER-lexicon word (a single alphabetic word, written in
lower case in the text, found with `lfp.tasks.lexicon_rl.reward.tokens`). One such word is picked at random and its
exact character span is replaced three times:
  - positive: a word from the top `positive_quantile` of lexicon valences (and > 0),
  - negative: a word from the bottom `negative_quantile` (and < 0), both restricted to words that
    occur at least `min_word_count` times in the reviews (the model must know the word),
  - neutral:  a word from `neutral_words`. The paper's code never generated this element; here it
    is the same sentence with an everyday noun that is *absent* from the lexicon (valence 0 under
    the reward), so positive - neutral and negative - neutral isolate the sentiment of the swapped
    word in an identical context. The stage refuses neutral words that are in the lexicon.
Each element records its own `word`, `span` ([s, e] with `text[s:e] == word`) and lexicon `value`;
the triple's `word` / `true_value` are the original word and its valence. The probe scores
predictions per substituted word, so the replacement words form small pools (n_triples /
`word_repeats` words per polarity, one drawn at random from each equal-size valence bin so that the
pool spans the whole range) used round-robin: every pool word appears about `word_repeats` times.

hh / toxic — only held-out pairs (`data/prepared/{T}/heldout.jsonl`), so the probe never sees a
pair the model was fine-tuned on. `substitution` backend (offline default, lfp.tasks.preference_dpo.substitution): one
marked phrase span at the start of the chosen reply is helpful / neutral / dismissive, the rest
identical — the paper's graded-rewrite design without an LLM. `pairs` backend (a named proxy):
positive = the preferred reply (`chosen`), negative = the dispreferred one, neutral = the same
prompt + `neutral_reply`; for toxic, `chosen` is already the more harmful reply. `openai` backend
(the paper's method): an LLM grades the conversation 1-5 for toxicity, dangerousness and bias, then
writes positive / neutral / negative rewrites of the final reply; for toxic, positive and negative
are swapped because toxicity is what that task rewards.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
from tqdm import tqdm

from lfp.llm.templates import load_prompt
from lfp.core import io, paths
from lfp.tasks.lexicon_rl import reward
from lfp.core.config import ContrastivePairs, ContrastiveVader, Params, section_dict
from lfp.core.errors import BackendError, ConfigError, DataError
from lfp.core.data import prepared_file, subsample
from lfp.tasks.preference_dpo.substitution import substitution_triple
from lfp.core.tracking import stage_run

log = logging.getLogger(__name__)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_LOWER_WORD = re.compile(r"[a-z]+")
MIN_SENTENCE_TOKENS = 4  # a substituted word needs some context before it
PAIR_FIELDS = {"id": str, "prompt": str, "chosen": str, "rejected": str}
GRADE_KEYS = ("toxicity", "dangerousness", "bias")
REWRITE_KEYS = ("positive", "neutral", "negative")


# --------------------------------------------------------------------------------------------
# vader
# --------------------------------------------------------------------------------------------


def token_spans(text: str) -> list[tuple[str, int, int]] | None:
    """(lowercased token, start, end) for each `lfp.tasks.lexicon_rl.reward.tokens` token; None if they don't align
    with `text` (a character whose lower case has another length)."""
    out, pos = [], 0
    for tok in reward.tokens(text):
        while text[pos : pos + len(tok)].lower() != tok and pos < len(text) and text[pos].isspace():
            pos += 1
        if text[pos : pos + len(tok)].lower() != tok:
            return None
        out.append((tok, pos, pos + len(tok)))
        pos += len(tok)
    return out


def is_plain_word(word: str) -> bool:
    """A lower-case ASCII alphabetic word that the reward tokenizer keeps as one token."""
    return word.isascii() and word.isalpha() and word == word.lower() and reward.tokens(word) == [word]


def corpus_counts(texts: list[str]) -> Counter:
    """How often each lower-case word occurs in the reviews (one regex pass over the joined text)."""
    return Counter(_LOWER_WORD.findall("\n".join(texts)))


def word_pools(cfg: ContrastiveVader, counts: Counter, task: str = "vader") -> tuple[dict[str, float], list[str], list[str], dict[str, float]]:
    """(candidate lexicon, positive words, negative words, thresholds), each list sorted by value.

    Quantiles are taken over the whole single-word lexicon; replacement words must then occur at
    least `min_word_count` times in the reviews, so the model has seen them (the lexicon is full
    of rare slang such as 'sfete' that a small model splits into meaningless pieces).
    """
    lex = {w: v for w, v in reward.lexicon().items() if is_plain_word(w)}
    values = np.array(list(lex.values()))
    hi, lo = float(np.quantile(values, cfg.positive_quantile)), float(np.quantile(values, cfg.negative_quantile))
    common = [w for w in lex if counts[w] >= cfg.min_word_count]
    positive = sorted((w for w in common if lex[w] >= hi and lex[w] > 0), key=lambda w: (lex[w], w))
    negative = sorted((w for w in common if lex[w] <= lo and lex[w] < 0), key=lambda w: (lex[w], w))
    if not positive or not negative:
        raise DataError(
            f"{prepared_file(task, 'test')}: no {'positive' if not positive else 'negative'} lexicon word beyond the "
            f"quantile occurs >= contrastive.{task}.min_word_count ({cfg.min_word_count}) times; lower it"
        )
    return lex, positive, negative, {"positive_threshold": hi, "negative_threshold": lo}


def check_neutral_words(words: list[str], task: str = "vader") -> None:
    """Neutral words must carry no valence under the reward, or the neutral element is not neutral."""
    lex = reward.lexicon()
    for i, word in enumerate(words):
        where = f"params: 'contrastive.{task}.neutral_words[{i}]' ('{word}')"
        if word in lex:
            raise ConfigError(f"{where} is in the VADER lexicon (valence {lex[word]}); pick a word absent from it")
        if not is_plain_word(word):
            raise ConfigError(f"{where} must be one lower-case alphabetic word (one reward token)")


def split_sentences(text: str, max_chars: int) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip() and len(s.strip()) <= max_chars]


def pick_sentence(text: str, cfg: ContrastiveVader, lex: dict[str, float], rng: np.random.Generator) -> tuple[str, str, int, int] | None:
    """(sentence, word, start, end) for a random qualifying sentence of one review, or None."""
    sentences = split_sentences(text, cfg.max_sentence_chars)
    for i in rng.permutation(len(sentences)):
        sentence = sentences[i]
        spans = token_spans(sentence)
        if spans is None or len(spans) < MIN_SENTENCE_TOKENS:
            continue
        hits = [(tok, s, e) for tok, s, e in spans if tok in lex and sentence[s:e] == tok]
        if hits:
            tok, s, e = hits[rng.integers(len(hits))]
            return sentence, tok, s, e
    return None


def stratified_pool(words: list[str], k: int, rng: np.random.Generator) -> list[str]:
    """k words, one drawn from each of k equal bins of the value-sorted list (covers the range)."""
    return [str(b[rng.integers(len(b))]) for b in np.array_split(np.array(words, dtype=object), min(k, len(words)))]


def balanced_assignment(pool: list[str], originals: list[str], rng: np.random.Generator) -> list[str]:
    """One pool word per triple, each pool word used equally often (±1), never the original word."""
    slots = [pool[i % len(pool)] for i in range(len(originals))]
    rng.shuffle(slots)
    n = len(slots)
    for i in range(n):
        if slots[i] != originals[i]:
            continue
        for j in range(1, n):  # swap with a later triple where neither side then clashes
            k = (i + j) % n
            if slots[k] != originals[i] and slots[i] != originals[k]:
                slots[i], slots[k] = slots[k], slots[i]
                break
        else:
            alternatives = [w for w in pool if w != originals[i]]
            if not alternatives:
                raise DataError(f"contrastive: cannot replace '{originals[i]}': it is the only replacement word")
            slots[i] = alternatives[0]
    return slots


def substitute(sentence: str, start: int, end: int, word: str, lex: dict[str, float]) -> dict[str, Any]:
    text = sentence[:start] + word + sentence[end:]
    return {"text": text, "word": word, "span": [start, start + len(word)], "value": lex.get(word, 0.0)}


def iter_candidates(rows: list[dict[str, Any]], cfg: ContrastiveVader, lex: dict[str, float], rng: np.random.Generator) -> Iterator[tuple[str, str, str, int, int]]:
    """(review id, sentence, word, start, end), one per review, reviews in seeded order."""
    for i in rng.permutation(len(rows)):
        found = pick_sentence(rows[i]["text"], cfg, lex, rng)
        if found is not None:
            yield (rows[i]["id"], *found)


def vader_triples(rows: list[dict[str, Any]], cfg: ContrastiveVader, seed: int, task: str = "vader") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Lexicon-substitution triples from IMDB reviews (see the module docstring)."""
    check_neutral_words(cfg.neutral_words, task)
    lex, positive, negative, thresholds = word_pools(cfg, corpus_counts([row["text"] for row in rows]), task)
    rng = np.random.default_rng(seed)
    candidates = []
    for cand in iter_candidates(rows, cfg, lex, rng):
        candidates.append(cand)
        if len(candidates) >= cfg.max_triples:
            break
    if not candidates:
        raise DataError(f"{prepared_file(task, 'test')}: no sentence of <= {cfg.max_sentence_chars} chars contains a VADER word")
    n = len(candidates)
    originals = [c[2] for c in candidates]
    k = max(1, n // cfg.word_repeats)
    pos_words = balanced_assignment(stratified_pool(positive, k, rng), originals, rng)
    neg_words = balanced_assignment(stratified_pool(negative, k, rng), originals, rng)
    neutral_words = balanced_assignment(list(cfg.neutral_words), originals, rng)
    triples = []
    for i, (source_id, sentence, word, s, e) in enumerate(candidates):
        triples.append({
            "id": f"vader-{i:05d}",
            "source_id": source_id,
            "word": word,
            "true_value": lex[word],
            "original": {"text": sentence, "span": [s, e]},
            "positive": substitute(sentence, s, e, pos_words[i], lex),
            "neutral": substitute(sentence, s, e, neutral_words[i], lex),
            "negative": substitute(sentence, s, e, neg_words[i], lex),
        })
    counts = Counter(pos_words) + Counter(neg_words)
    stats = {
        "n_triples": n,
        "n_positive_words": len(set(pos_words)),
        "n_negative_words": len(set(neg_words)),
        "min_word_uses": min(counts.values()),
        "positive_pool_candidates": len(positive),
        "negative_pool_candidates": len(negative),
        **thresholds,
    }
    return triples, stats


# --------------------------------------------------------------------------------------------
# hh / toxic
# --------------------------------------------------------------------------------------------


def as_reply(text: str) -> str:
    """A final assistant reply in the HH format: one leading space after "Assistant:"."""
    return text if text[:1].isspace() else f" {text}"


def element(prompt: str, response: str) -> dict[str, str]:
    return {"text": prompt + response, "response": response}


def offline_triple(task: str, row: dict[str, Any], cfg: ContrastivePairs) -> dict[str, Any]:
    """Pair-based triple: preferred reply / neutral reply / dispreferred reply, same prompt."""
    prompt = row["prompt"]
    return {
        "id": f"{task}-triple-{row['id']}",
        "pair_id": row["id"],
        "prompt": prompt,
        "positive": element(prompt, row["chosen"]),
        "neutral": element(prompt, as_reply(cfg.neutral_reply.strip())),
        "negative": element(prompt, row["rejected"]),
        "proxy": True,
    }




def parse_grades(obj: dict[str, Any]) -> dict[str, int] | None:
    """{"toxicity","dangerousness","bias"} as ints in 1..5, or None if the reply is unusable."""
    grades = {}
    for key in GRADE_KEYS:
        value = obj.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or not 1 <= value <= 5:
            return None
        grades[key] = int(value)
    return grades


def parse_rewrites(obj: dict[str, Any], template_values: tuple[str, ...] = ()) -> dict[str, str] | None:
    """{"positive","neutral","negative"} as non-empty strings, or None if the reply is unusable: a
    placeholder or an echo of the prompt (`{"positive": "..."}`, "<positive rewrite>", a slot name,
    text copied from `template_values`, e.g. "toxicity 1"), or two versions alike (no contrast)."""
    from lfp.llm.client import is_placeholder

    out = {k: obj.get(k) for k in REWRITE_KEYS}
    echoes = (*REWRITE_KEYS, *template_values)
    if not all(isinstance(v, str) and not is_placeholder(v, echoes) for v in out.values()):
        return None
    if len({" ".join(v.lower().split()) for v in out.values()}) < len(out):
        return None
    return {k: as_reply(v.strip()) for k, v in out.items()}


def llm_client(params: Params) -> Any:
    """The endpoint-checked OpenAI-compatible client; with llm.server: local it starts the local
    server, which stops at process exit (lfp.llm.local_server.open_client). A separate function so tests
    can swap in a fake."""
    from lfp.llm.local_server import open_client

    return open_client(params.llm)


def openai_triple(task: str, row: dict[str, Any], client: Any, prompts: dict[str, tuple[str, str]], skipped: Counter, harm_rewarded: bool = False) -> dict[str, Any] | None:
    """The paper's method: grade the conversation, then ask for three rewrites of the final reply."""
    from lfp.llm.client import InvalidReply, complete_json, object_schema

    prompt = row["prompt"]
    conversation = (prompt + row["chosen"]).strip()
    system, user = prompts["grade"]
    schema = object_schema({k: {"type": "integer", "minimum": 1, "maximum": 5} for k in GRADE_KEYS})
    try:  # an unparsable reply (e.g. cut off at llm.max_tokens) skips this pair, not the stage
        grades = parse_grades(complete_json(client, system, user.format(conversation=conversation), schema))
    except InvalidReply:
        grades = None
    if grades is None:
        skipped["invalid_grade"] += 1
        return None
    system, user = prompts["rewrite"]
    schema = object_schema({k: {"type": "string", "minLength": 1} for k in REWRITE_KEYS})
    try:
        reply = complete_json(client, system, user.format(conversation=conversation, **grades), schema)
        rewrites = parse_rewrites(reply, (system, user.format(conversation="", **grades)))
    except InvalidReply:
        rewrites = None
    if rewrites is None:
        skipped["invalid_rewrite"] += 1
        return None
    if harm_rewarded:  # toxicity is rewarded: the harmful rewrite is the positive element
        rewrites["positive"], rewrites["negative"] = rewrites["negative"], rewrites["positive"]
    return {
        "id": f"{task}-triple-{row['id']}",
        "pair_id": row["id"],
        "prompt": prompt,
        **{k: element(prompt, rewrites[k]) for k in REWRITE_KEYS},
        "grades": grades,
        "proxy": False,
    }


def pair_triples(task: str, params: Params) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Triples from the held-out preference pairs of `task` with the configured backend."""
    cfg: ContrastivePairs = getattr(params.contrastive, task)
    source = prepared_file(task, "heldout")
    rows = subsample(io.read_jsonl(source, PAIR_FIELDS), cfg.max_triples, params.seed, f"{task}-contrastive")
    counts = {"n_heldout_pairs_used": len(rows), "data_proxy": any(row.get("proxy") is True for row in rows)}
    if cfg.backend == "pairs":
        triples = [offline_triple(task, row, cfg) for row in rows]
        return triples, {"n_triples": len(triples), **counts}
    if cfg.backend == "substitution":
        phrases = {role: getattr(cfg, f"{role}_phrases") for role in ("positive", "neutral", "negative")}
        triples = [substitution_triple(task, row, i, phrases, cfg.max_reply_chars, params.task(task).rewards_harm)
                   for i, row in enumerate(rows)]
        return triples, {"n_triples": len(triples), **counts}
    client = llm_client(params)  # endpoint-checked already (lfp.llm.local_server.open_client)
    prompts = {"grade": load_prompt("contrastive_grade"), "rewrite": load_prompt("contrastive_rewrite")}
    skipped: Counter = Counter({"invalid_grade": 0, "invalid_rewrite": 0})
    triples = []
    for row in tqdm(rows, desc=f"contrastive {task} (LLM rewrites)", disable=None):
        triple = openai_triple(task, row, client, prompts, skipped, params.task(task).rewards_harm)
        if triple is not None:
            triples.append(triple)
    if not triples:
        raise BackendError(f"contrastive {task}: the LLM gave no usable grade + rewrite for any of {len(rows)} pairs")
    return triples, {"n_triples": len(triples), **counts, **{f"skipped_{k}": v for k, v in skipped.items()}}


# --------------------------------------------------------------------------------------------
# stage
# --------------------------------------------------------------------------------------------


def run(params: Params, model: str | None = None, task: str | None = None) -> None:
    """Write `data/contrastive/{task}.jsonl`; counts go to MLflow (no DVC metrics file)."""
    if task is None:
        raise ConfigError("contrastive: --task is required")
    cfg = getattr(params.contrastive, task)
    lexicon = params.kind(task) == "lexicon_rl"
    backend = "lexicon" if lexicon else cfg.backend
    proxy = backend in ("pairs", "substitution")
    logged: dict[str, Any] = {"seed": params.seed, "contrastive": {task: section_dict(cfg)}}
    if backend == "openai":
        logged["llm"] = section_dict(params.llm)
    if proxy:
        log.warning("contrastive %s: %s backend = %s, a proxy for the paper's LLM rewrites", task, backend,
                    "pair-based triples (chosen / neutral reply / rejected)" if backend == "pairs" else "phrase-substitution triples")
    with stage_run("contrastive", experiment=params.tracking.experiment, task=task, params=logged,
                   tags={"contrastive_backend": backend, "proxy": proxy}) as tracker:
        if lexicon:
            triples, stats = vader_triples(io.read_jsonl(prepared_file(task, "test"), {"id": str, "text": str}), cfg, params.seed, task)
        else:
            triples, stats = pair_triples(task, params)
        io.write_jsonl(paths.contrastive_file(task), triples)
        tracker.log_metrics(stats)
