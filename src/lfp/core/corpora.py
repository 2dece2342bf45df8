"""Raw corpora -> validated rows: IMDB reviews, HH-RLHF dialogues, local preference JSONL.

Why a core module: the task kinds (lfp/tasks/) prepare their data from these readers, so a new
task of an existing kind reuses them through params alone. Every reader validates each line and
names `file:line: field` on bad input; nothing here writes.

- IMDB: `<br />` tags turned into newlines, ids from the raw line number (`imdb-test-000123`).
- HH-RLHF: pairs split at the last "\\n\\nAssistant:" into a shared prompt and two replies
  (leading space kept). Pairs whose prompts differ, whose reply is empty or whose two replies are
  identical are dropped and counted.
- local JSONL (toxic-dpo-v0.2 format: `prompt`, `chosen`, `rejected`): the bare prompt is wrapped
  as one HH turn.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lfp.core import io, paths
from lfp.core.errors import DataError

ASSISTANT = "\n\nAssistant:"
HUMAN = "\n\nHuman:"
IMDB_FIELDS = {"text": str, "label": int}
HH_FIELDS = {"chosen": str, "rejected": str}
PAIR_FIELDS = {"prompt": str, "chosen": str, "rejected": str}
PAIR_DROP_REASONS = ("no_assistant_turn", "prompt_mismatch", "empty_response", "identical_responses")
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_SPACES = re.compile(r" {2,}")


def imdb_path(split: str) -> Path:
    return paths.RAW / "imdb" / f"imdb_{split}.jsonl.gz"


def hh_path(subset: str) -> Path:
    return paths.RAW / "hh-rlhf" / subset / "test.jsonl.gz"


def normalize_review(text: str) -> str:
    """IMDB markup -> plain text: `<br />` runs become one newline, repeated spaces collapse.

    String checks guard each regex: on 50k reviews this keeps the stage at a few seconds.
    """
    if "<" in text:
        text = "\n".join(part for part in (p.strip() for p in _BR.split(text)) if part)
    text = text.replace("\t", " ")
    if "  " in text:
        text = _SPACES.sub(" ", text)
    return text.strip()


def read_imdb(split: str, drops: collections.Counter) -> list[dict[str, Any]]:
    """All rows of one IMDB split, validated; empty reviews are dropped and counted."""
    path = imdb_path(split)
    rows = []
    for lineno, obj in io.iter_jsonl(path, IMDB_FIELDS):
        if obj["label"] not in (0, 1):
            raise DataError(f"{path}:{lineno}: field 'label' must be 0 or 1, got {obj['label']}")
        text = normalize_review(obj["text"])
        if not text:
            drops["empty_text"] += 1
            continue
        rows.append({"id": f"imdb-{split}-{lineno - 1:06d}", "text": text, "label": obj["label"]})
    return rows


def split_dialogue(dialogue: str) -> tuple[str, str] | None:
    """(prompt up to and including the last "\\n\\nAssistant:", final reply) or None if no turn."""
    cut = dialogue.rfind(ASSISTANT)
    if cut < 0:
        return None
    end = cut + len(ASSISTANT)
    return dialogue[:end], dialogue[end:]


def make_pair(prompt_c: str, chosen: str, prompt_r: str, rejected: str) -> tuple[dict[str, str] | None, str | None]:
    """A validated pair or (None, drop reason)."""
    if prompt_c != prompt_r:
        return None, "prompt_mismatch"
    if not chosen.strip() or not rejected.strip():
        return None, "empty_response"
    if chosen == rejected:
        return None, "identical_responses"
    return {"prompt": prompt_c, "chosen": chosen, "rejected": rejected}, None


def read_hh_subset(subset: str) -> tuple[list[dict[str, Any]], collections.Counter]:
    """Validated pairs of one HH-RLHF subset (ids `{subset}-{line-1}`) and drop counts by reason."""
    drops: collections.Counter = collections.Counter()
    pairs = []
    for lineno, obj in io.iter_jsonl(hh_path(subset), HH_FIELDS):
        chosen, rejected = split_dialogue(obj["chosen"]), split_dialogue(obj["rejected"])
        if chosen is None or rejected is None:
            drops["no_assistant_turn"] += 1
            continue
        pair, reason = make_pair(chosen[0], chosen[1], rejected[0], rejected[1])
        if pair is None:
            drops[reason] += 1
            continue
        pairs.append({"key": f"{subset}-{lineno - 1:05d}", "subset": subset, **pair})
    return pairs, drops


def read_pairs_file(path: Path) -> tuple[list[dict[str, Any]], collections.Counter]:
    """Pairs of a local preference JSONL (toxic-dpo-v0.2 format: `prompt`, `chosen`, `rejected`); the
    bare prompt is wrapped as one HH turn; `subset` = the file's name without extensions.

    A user's own file is held to a stricter rule than the shipped HH data: an empty field, identical
    replies or a repeated pair stops with `file:line` (a silently dropped or duplicated pair would
    bias DPO and leak across the held-out split)."""
    seen: dict[tuple[str, str, str], int] = {}
    pairs = []
    for lineno, obj in io.iter_jsonl(path, PAIR_FIELDS):
        for name in ("prompt", "chosen", "rejected"):
            if not obj[name].strip():
                raise DataError(f"{path}:{lineno}: field '{name}' is empty")
        key = (obj["prompt"].strip(), obj["chosen"].strip(), obj["rejected"].strip())
        if key[1] == key[2]:
            raise DataError(f"{path}:{lineno}: fields 'chosen' and 'rejected' are identical")
        if key in seen:
            raise DataError(f"{path}:{lineno}: duplicate of the pair on line {seen[key]}")
        seen[key] = lineno
        prompt = f"{HUMAN} {obj['prompt'].strip()}{ASSISTANT}"
        replies = [r if r[:1].isspace() else f" {r}" for r in (obj["chosen"], obj["rejected"])]
        pair, reason = make_pair(prompt, replies[0], prompt, replies[1])
        if pair is None:
            raise DataError(f"{path}:{lineno}: unusable pair ({reason})")
        pairs.append({"key": f"dpo-{lineno - 1:05d}", "subset": path.name.split(".")[0], **pair})
    return pairs, collections.Counter()


def pair_rows(task: str, pairs: Iterable[dict[str, Any]], *, swap: bool, proxy: bool | None) -> list[dict[str, Any]]:
    """Prepared rows `{"id","prompt","chosen","rejected","subset"}` (+ `proxy` for toxic)."""
    rows = []
    for p in pairs:
        chosen, rejected = (p["rejected"], p["chosen"]) if swap else (p["chosen"], p["rejected"])
        row = {"id": f"{task}-{p['key']}", "prompt": p["prompt"], "chosen": chosen, "rejected": rejected, "subset": p["subset"]}
        if proxy is not None:
            row["proxy"] = proxy
        rows.append(row)
    return rows
