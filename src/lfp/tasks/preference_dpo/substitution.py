"""Offline contrastive triples for preference tasks that keep the paper's design: the HH analogue of
the VADER word substitution. From each held-out chosen reply, three variants that differ in ONE
marked span — a helpful/polite phrase (positive), neutral filler (neutral), a dismissive/harmful
phrase (negative), all params-named lists — put at the start of the reply; the prompt and the rest
of the reply are identical across the three. Where the task rewards harm (`rewards_harm`), the
positive and negative phrases swap, as the paper's rewrites do for toxic.

The reply is cut at a sentence end after `max_reply_chars`, so the span stays inside the probe's
token window. Phrases are assigned round-robin (phrase i of each list in triple i), so every phrase
appears about equally often; `phrase_index` lets the probe hold whole phrases out of training, the
way the lexicon measurement holds whole words out.
"""

from __future__ import annotations

import re
from typing import Any

_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def cut_reply(reply: str, max_chars: int) -> str:
    """The reply's first sentences up to about `max_chars` (whole sentences when possible)."""
    text = reply.strip()
    if len(text) <= max_chars:
        return text
    ends = [m.start() for m in _SENTENCE_END.finditer(text) if m.start() <= max_chars]
    return text[: ends[-1]] if ends else text[:max_chars]


def variant(prompt: str, phrase: str, rest: str) -> dict[str, Any]:
    """One element: prompt + " " + phrase + " " + rest, with the phrase's span in the response."""
    response = f" {phrase} {rest}" if rest else f" {phrase}"
    return {"text": prompt + response, "response": response, "phrase": phrase, "span": [1, 1 + len(phrase)]}


def substitution_triple(task: str, row: dict[str, Any], index: int, phrases: dict[str, list[str]], max_reply_chars: int,
                        rewards_harm: bool) -> dict[str, Any]:
    """The triple of held-out pair `row` using phrase `index` (mod list length) of each role."""
    rest = cut_reply(row["chosen"], max_reply_chars)
    pick = {role: phrases[role][index % len(phrases[role])] for role in ("positive", "neutral", "negative")}
    if rewards_harm:
        pick["positive"], pick["negative"] = pick["negative"], pick["positive"]
    return {
        "id": f"{task}-triple-{row['id']}",
        "pair_id": row["id"],
        "prompt": row["prompt"],
        **{role: variant(row["prompt"], pick[role], rest) for role in pick},
        "phrase_index": index % min(len(phrases["positive"]), len(phrases["negative"])),
        "proxy": True,
    }
