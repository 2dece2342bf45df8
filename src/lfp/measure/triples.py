"""Contrastive triples -> token windows: the contract between `contrastive` and `probe`.

Every field the probe uses is checked with `file:line: field` on bad input. Lexicon triples carry
the substituted word, its char span and lexicon value per element; preference triples a shared
prompt and a response per element (the span pooled is the response).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lfp.core import io, paths
from lfp.core.errors import DataError, ModelLoadError
from lfp.models.tokens import keep_last, leading_special_ids

LEXICON_ELEMENT_FIELDS = {"text": str, "word": str, "span": list, "value": (int, float)}
ROLES = ("positive", "neutral", "negative")


@dataclass
class Triples:
    """Parsed triples: per element role, its text and the char span whose tokens are pooled."""

    path: str
    lines: list[int]
    groups: list[str]  # the split / bootstrap unit (lexicon: triple id; preference: source pair id)
    texts: dict[str, list[str]]
    spans: dict[str, list[tuple[int, int]]]
    words: dict[str, list[str]]  # lexicon tasks only
    values: dict[str, list[float]]  # lexicon tasks only
    proxy: bool = False


def _element(obj: dict[str, Any], role: str, where: str, fields: dict[str, Any]) -> dict[str, Any]:
    el = obj.get(role)
    if not isinstance(el, dict):
        raise DataError(f"{where}: field '{role}' should be an object")
    for name, typ in fields.items():
        if name not in el:
            raise DataError(f"{where}: missing field '{role}.{name}'")
        if isinstance(el[name], bool) or not isinstance(el[name], typ):
            raise DataError(f"{where}: field '{role}.{name}' has the wrong type")
    return el


def load_triples(task: str, lexicon: bool) -> Triples:
    """Read `data/contrastive/{task}.jsonl`, checking every field the probe uses (`lexicon`: word
    substitution triples of a lexicon task; otherwise preference triples)."""
    path = paths.contrastive_file(task)
    out = Triples(str(path), [], [], {r: [] for r in ROLES}, {r: [] for r in ROLES}, {r: [] for r in ROLES}, {r: [] for r in ROLES})
    for lineno, obj in io.iter_jsonl(path, {"id": str}):
        where = f"{path}:{lineno}"
        out.lines.append(lineno)
        if lexicon:
            out.groups.append(obj["id"])
            for role in ROLES:
                el = _element(obj, role, where, LEXICON_ELEMENT_FIELDS)
                span = el["span"]
                if len(span) != 2 or not all(isinstance(x, int) for x in span) or not 0 <= span[0] < span[1] <= len(el["text"]):
                    raise DataError(f"{where}: field '{role}.span' must be [start, end] inside '{role}.text'")
                if el["text"][span[0] : span[1]] != el["word"]:
                    raise DataError(f"{where}: '{role}.word' {el['word']!r} is not at '{role}.span' {span} of '{role}.text'")
                out.texts[role].append(el["text"])
                out.spans[role].append((span[0], span[1]))
                out.words[role].append(el["word"])
                out.values[role].append(float(el["value"]))
        else:
            prompt = obj.get("prompt")
            if not isinstance(prompt, str):
                raise DataError(f"{where}: field 'prompt' should be str")
            out.groups.append(str(obj.get("pair_id", obj["id"])))
            out.proxy = out.proxy or obj.get("proxy") is True
            for role in ROLES:
                el = _element(obj, role, where, {"text": str, "response": str})
                if el["text"] != prompt + el["response"]:
                    raise DataError(f"{where}: field '{role}.text' must equal prompt + '{role}.response'")
                out.texts[role].append(el["text"])
                out.spans[role].append((len(prompt), len(el["text"])))
    return out


def token_window(tokenizer: Any, text: str, span: tuple[int, int], max_length: int) -> tuple[list[int], list[int]]:
    """(input ids, positions of the tokens overlapping char `span`).

    The text is cut after the span's last token (later tokens cannot influence it in a causal LM)
    and truncated from the left to `max_length` (keeping a leading `<bos>`), so the span survives.
    Empty positions if the span maps to no token.
    """
    try:
        enc = tokenizer(text, return_offsets_mapping=True, verbose=False)
    except NotImplementedError:
        raise ModelLoadError(f"{type(tokenizer).__name__}: the probe needs a fast tokenizer (offset mapping)") from None
    start, end = span
    pos = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and b > start and a < end]
    if not pos:
        return [], []
    stop = pos[-1] + 1
    lead = leading_special_ids(tokenizer)
    kept = keep_last(enc["input_ids"][:stop], max_length, lead)
    shift = stop - len(kept)  # ids before the kept tail were dropped (after the kept `lead`, if cut)
    lowest = shift + len(lead) if shift else 0
    return kept, [p - shift for p in pos if p >= lowest]


def windows_for(triples: Triples, role: str, tokenizer: Any, max_length: int) -> list[tuple[list[int], list[int]]]:
    out = []
    for text, span, line in zip(triples.texts[role], triples.spans[role], triples.lines):
        ids, pos = token_window(tokenizer, text, span, max_length)
        if not pos:
            raise DataError(f"{triples.path}:{line}: '{role}' span {list(span)} covers no token")
        out.append((ids, pos))
    return out
