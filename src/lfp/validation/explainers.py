"""Feature explanations, task-relatedness labels and explanation scores (Bills et al. 2023 style).

Two backends with the same interface:
- `OpenAIExplainer`: an LLM explains a feature from token<TAB>activation records (0-10), labels it
  related / unrelated to a task description, and simulates activations from the explanation;
  the score is the Pearson r of simulated vs real activations.
- `OfflineExplainer`: a deterministic, clearly-named proxy. The explanation lists the words the
  feature peaks on; relatedness comes from the VADER lexicon (vader: share of peak words with
  |valence| >= 1; toxic: share with valence <= -1; hh: no label, never invented), and the text
  says which rule and for which task description; the simulator predicts 10 on tokens whose word
  is in the explanation's top-token list, else 0.
Token strings come from `decode_tokens`: whole characters, never U+FFFD from a split byte.
"""

from __future__ import annotations

import string
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from lfp.llm.templates import load_prompt
from lfp.core.errors import BackendError
from lfp.llm.client import InvalidReply, LlmClient, is_placeholder, object_schema

MAX_ACT = 10
N_TOP_TOKENS = 8
N_NAMED_WORDS = 5  # the offline explanation names this many peak words (lfp.validation.detection scores them)
HH_OFFLINE_NOTE = "relatedness not available offline"
UNUSABLE = "unusable LLM explanation"  # prefix of a placeholder / echoed reply, kept visible, never labelled
RELATED_SCHEMA = object_schema({"related": {"type": "boolean"}})
SIMULATE_SCHEMA = object_schema({"activations": {"type": "array", "items": {
    "type": "array", "items": {"type": "integer", "minimum": 0, "maximum": MAX_ACT}}}})
EXPLANATION_MAX_TOKENS = 64  # one sentence; a weak model otherwise rambles to llm.max_tokens (measured: SmolLM2)
EXPLANATION_LEAD = "the main thing this feature does is find"  # the prompt's last words, often repeated
SIMULATE_TOKENS_PER_VALUE = 3  # "10, " is up to 3 tokens; the reply's budget follows the documents' shape
_STRIP = string.punctuation + string.whitespace + "“”‘’«»…"


@dataclass(frozen=True)
class Context:
    """A window of tokens around one activation of a feature, activations scaled to 0..10."""

    tokens: list[str]  # decoded token strings
    words: list[str]  # the normalized word each token belongs to ("" for punctuation/space)
    acts: list[int]  # 0..10, scaled by the feature's max over the corpus
    peak: int  # index of the strongest token in this window


@dataclass(frozen=True)
class FeatureRecord:
    """Everything an explainer sees about one feature of the small (x1) dictionary."""

    layer: int
    feature: int
    similarity: float  # max cosine to the large dictionary (matching.json max_cos)
    max_activation: float  # the feature's largest code value over the corpus
    top: list[Context]  # the highest-activating contexts (shown to the explainer)
    random: list[Context]  # random contexts (only used to score simulations)

    @property
    def peak_words(self) -> list[str]:
        return [c.words[c.peak] for c in self.top]


@dataclass(frozen=True)
class Explanation:
    explanation: str
    related: bool | None
    top_tokens: list[str]
    simulation_score: float | None


REPLACEMENT = "\ufffd"  # what a decoder prints for bytes that are not (yet) a whole UTF-8 character
MAX_PIECES_PER_CHAR = 8  # a character spans at most 4 byte-level tokens; more means U+FFFD is in the text


def decode_tokens(tokenizer: Any, ids: list[int]) -> list[str]:
    """One display string per token id, decoded in the shortest spans that are whole characters.

    Why: a byte-level BPE token can hold part of a UTF-8 character ("’" is three bytes, often two
    tokens); decoded alone it prints U+FFFD. A token that ends inside a character is decoded
    together with the tokens that complete it: the span's text goes to its last token and the
    tokens before it get "" (so the list keeps one entry per token, its activations stay aligned,
    and "".join(...) is the decoded text). A real U+FFFD in the text stays after a few tokens.
    """
    out: list[str] = []
    start = 0
    for i in range(len(ids)):
        text = tokenizer.decode(ids[start : i + 1])
        if text.endswith(REPLACEMENT) and i + 1 < len(ids) and i + 1 - start < MAX_PIECES_PER_CHAR:
            out.append("")  # inside a character: wait for the token that completes it
            continue
        out.append(text)
        start = i + 1
    return out


def normalize_word(word: str) -> str:
    """Lowercase and strip surrounding punctuation, so ' Great!' and 'great' count as one word."""
    return word.strip(_STRIP).lower()


def top_tokens(record: FeatureRecord) -> list[str]:
    """Distinct peak words, most frequent first (ties: first seen)."""
    words = [w for w in record.peak_words if w]
    order = {w: i for i, w in reversed(list(enumerate(words)))}
    return sorted(order, key=lambda w: (-words.count(w), order[w]))[:N_TOP_TOKENS]


def scale_activations(values: np.ndarray, max_activation: float) -> list[int]:
    """Bills et al.: activations discretized to integers 0..10 by the feature's max."""
    if max_activation <= 0:
        return [0] * len(values)
    scaled = np.rint(np.clip(values, 0.0, None) / max_activation * MAX_ACT)
    return [int(v) for v in np.clip(scaled, 0, MAX_ACT)]


def correlation(predicted: list[float], real: list[float]) -> float | None:
    """Pearson r of simulated vs real activations; None where undefined (a constant side)."""
    from scipy.stats import pearsonr

    p, r = np.asarray(predicted, dtype=float), np.asarray(real, dtype=float)
    if len(p) < 2 or np.ptp(p) == 0 or np.ptp(r) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(pearsonr(p, r).statistic)


def simulation_contexts(record: FeatureRecord) -> list[Context]:
    """Top + random contexts: scoring on random ones too keeps the score from being in-sample only."""
    return [*record.top, *record.random]


# --------------------------------------------------------------------------------------------
# offline
# --------------------------------------------------------------------------------------------


def word_valences(word: str) -> list[float]:
    from lfp.tasks.lexicon_rl.reward import lexicon, tokens

    lex = lexicon()
    return [lex[t] for t in tokens(word) if t in lex]


# offline relatedness rules (a task's `related_words`): does a valence carry the task's signal?
RELATED_WORDS = {
    "valenced": lambda v: abs(v) >= 1.0,
    "negative": lambda v: v <= -1.0,
    "positive": lambda v: v >= 1.0,
}


# how the offline explanation names each rule's signal (the wording follows the task, e.g. toxic)
RULE_TEXT = {
    "valenced": "carry VADER valence (|valence| ≥ 1)",
    "negative": "are negative in the VADER lexicon (valence ≤ −1)",
    "positive": "are positive in the VADER lexicon (valence ≥ 1)",
}


def related_share(words: list[str], rule: str) -> float | None:
    """Share of peak words carrying the task's signal in the VADER lexicon under `rule`; None for
    rule "none" (e.g. helpfulness: no lexicon rule, and a label is never invented)."""
    if rule == "none" or not words:
        return None
    if rule not in RELATED_WORDS:
        raise BackendError(f"offline explainer: no relatedness rule '{rule}' (known: {', '.join(RELATED_WORDS)}, none)")
    hit = RELATED_WORDS[rule]
    return float(np.mean([any(hit(v) for v in word_valences(w)) for w in words]))


def _snippet(ctx: Context, before: int = 6) -> str:
    """A few tokens before the peak through the end of the peak's word (BPE pieces kept whole)."""
    end = ctx.peak + 1
    # "" is a token inside a multi-byte character (decode_tokens): the next token completes it
    while end < len(ctx.tokens) and (not ctx.tokens[end - 1] or (ctx.tokens[end][:1].isalnum() and ctx.words[end] == ctx.words[ctx.peak])):
        end += 1
    return " ".join("".join(ctx.tokens[max(0, ctx.peak - before) : end]).split())


class OfflineExplainer:
    """Deterministic lexical proxy for the GPT-4 explainer (`explainer_is_proxy=true`)."""

    name = "offline"
    simulation_backend = "offline-lexical"

    def __init__(self, related_rule: str, related_threshold: float, simulate: bool, task_description: str = "") -> None:
        self.related_rule = related_rule
        self.threshold = related_threshold
        self.simulate = simulate
        self.task_description = task_description  # named beside the lexicon rule it stands in for

    def close(self) -> None:
        """Nothing to release (the same interface as OpenAIExplainer)."""

    def explain(self, record: FeatureRecord) -> Explanation:
        if not record.top:
            return Explanation("never activates on the corpus", None, [], None)
        words = top_tokens(record)
        snippet = _snippet(record.top[0])
        text = f"peaks on {', '.join(repr(w) for w in words[:N_NAMED_WORDS]) or 'punctuation/whitespace'}; e.g. “{snippet}”"
        share = related_share(record.peak_words, self.related_rule)
        if share is None:
            related = None
            text += f"; {HH_OFFLINE_NOTE}"
        else:
            related = share >= self.threshold
            text += f"; {share:.0%} of peak words {RULE_TEXT.get(self.related_rule, f'match the lexicon rule {self.related_rule!r}')}"
            if self.task_description:
                text += f", the lexicon proxy for the task ({self.task_description})"
        score = self._simulate(record, set(words)) if self.simulate else None
        return Explanation(text, related, words, score)

    @staticmethod
    def _simulate(record: FeatureRecord, words: set[str]) -> float | None:
        """Predict 10 where the token's word is one of the explanation's top tokens, else 0."""
        predicted, real = [], []
        for ctx in simulation_contexts(record):
            predicted += [MAX_ACT if w and w in words else 0 for w in ctx.words]
            real += ctx.acts
        return correlation(predicted, real)


# --------------------------------------------------------------------------------------------
# openai-compatible LLM
# --------------------------------------------------------------------------------------------




def _show(token: str) -> str:
    return token.replace("\n", "\\n").replace("\t", "\\t")


def format_records(contexts: list[Context]) -> str:
    """Bills et al. record format: <start>, token<TAB>activation lines, <end>."""
    blocks = []
    for ctx in contexts:
        lines = [f"{_show(t)}\t{a}" for t, a in zip(ctx.tokens, ctx.acts)]
        blocks.append("<start>\n" + "\n".join(lines) + "\n<end>")
    return "\n".join(blocks)


def format_documents(contexts: list[Context]) -> str:
    blocks = []
    for ctx in contexts:
        blocks.append("<start>\n" + "\n".join(_show(t) for t in ctx.tokens) + "\n<end>")
    return "\n".join(blocks)


class OpenAIExplainer:
    """GPT-4-style explainer over any OpenAI-compatible endpoint (see lfp.llm.client)."""

    name = "openai"
    simulation_backend = "openai"

    def __init__(self, client: LlmClient, task_description: str, simulate: bool, seed: int) -> None:
        self.client = client
        self.task_description = task_description
        self.simulate = simulate
        self.seed = seed

    def close(self) -> None:
        """Release the client (stops a local LLM server it started)."""
        self.client.close()

    def explain(self, record: FeatureRecord) -> Explanation:
        if not record.top:
            return Explanation("never activates on the corpus", None, [], None)
        system, user = load_prompt("explain")
        reply = self.client.complete(system, user.format(feature=record.feature, records=format_records(record.top)),
                                     max_tokens=min(self.client.max_tokens, EXPLANATION_MAX_TOKENS))
        text = " ".join(reply.strip().split())
        if not text:
            raise BackendError(f"LLM endpoint {self.client.base_url}: empty explanation for layer {record.layer} feature {record.feature}")
        if text.lower().startswith(EXPLANATION_LEAD):  # the reply repeated the prompt's lead-in: keep the continuation
            text = text[len(EXPLANATION_LEAD):].strip()
        # A weak model echoes the prompt ("the main thing this feature does is find") or a slot:
        # kept visible, but neither labelled nor scored as if it explained something.
        if is_placeholder(text, (system, user)):
            return Explanation(f"{UNUSABLE}: {text[:120]}", None, top_tokens(record), None)
        related = self._related(text)
        score = self._simulate(record, text) if self.simulate else None
        return Explanation(text, related, top_tokens(record), score)

    def _related(self, explanation: str) -> bool:
        system, user = load_prompt("relatedness")
        kw: dict[str, Any] = {"task_description": self.task_description, "explanation": explanation}
        answer = self.client.complete_json(system.format(**kw), user.format(**kw), schema=RELATED_SCHEMA)
        if not isinstance(answer.get("related"), bool):
            raise BackendError(f"LLM endpoint {self.client.base_url}: relatedness reply lacks a boolean 'related': {str(answer)[:80]}")
        return answer["related"]

    def _simulate(self, record: FeatureRecord, explanation: str) -> float | None:
        """Ask for 0..10 per token; a reply of the wrong shape scores None (counted, not faked)."""
        contexts = simulation_contexts(record)
        order = np.random.default_rng([self.seed, record.layer, record.feature]).permutation(len(contexts))
        shown = [contexts[i] for i in order]
        shape = "lists of lengths " + ", ".join(str(len(c.tokens)) for c in shown)
        system, user = load_prompt("simulate")
        budget = SIMULATE_TOKENS_PER_VALUE * sum(len(c.tokens) for c in shown) + 16
        try:
            answer = self.client.complete_json(system, user.format(explanation=explanation, documents=format_documents(shown), shape=shape),
                                               schema=SIMULATE_SCHEMA, max_tokens=max(budget, self.client.max_tokens))
        except InvalidReply:  # e.g. cut off at max_tokens: unscored, like a reply of the wrong shape
            return None
        lists = answer.get("activations")
        if not isinstance(lists, list) or len(lists) != len(shown):
            return None
        predicted, real = [], []
        for ctx, values in zip(shown, lists):
            if not isinstance(values, list) or len(values) != len(ctx.tokens):
                return None
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                return None
            predicted += [float(v) for v in values]
            real += ctx.acts
        return correlation(predicted, real)
