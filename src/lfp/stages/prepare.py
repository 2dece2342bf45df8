"""`lfp prepare`: raw IMDB / HH-RLHF (/ toxic-dpo) -> validated, normalized JSONL.

Why: every later stage reads the same small, clean files instead of re-parsing raw dialogues.
All raw rows are read and validated *before* anything is written, so a malformed line stops the
stage with `file:line: what` and leaves the previous outputs untouched.

- vader: IMDB reviews, `<br />` tags turned into newlines, ids from the raw line number
  (`imdb-test-000123`); `imdb_*_limit` keeps a seeded subsample (the raw files are sorted by
  label, so "the first N" would be all negative).
- hh: helpful-base + harmless-base test pairs split at the last "\\n\\nAssistant:" into a shared
  prompt and two replies (leading space kept). Pairs whose prompts differ, whose reply is empty or
  whose two replies are identical are dropped and counted.
- toxic: a local toxic-dpo-v0.2 JSONL (`prompt`, `chosen`, `rejected`) when `toxic_source` is a
  path; otherwise the PROXY: harmless-base pairs with chosen/rejected swapped, so the preferred
  reply is the more harmful one. Proxy rows carry `"proxy": true`.
- Splits and limits rank pair ids by a seeded hash, so a pair's side of the finetune/held-out
  split depends only on (seed, id): stable when other rows are added or dropped.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lfp import io, paths
from lfp.config import Params, section_dict
from lfp.errors import DataError
from lfp.tracking import stage_run

log = logging.getLogger(__name__)

ASSISTANT = "\n\nAssistant:"
HUMAN = "\n\nHuman:"
IMDB_FIELDS = {"text": str, "label": int}
HH_FIELDS = {"chosen": str, "rejected": str}
TOXIC_FIELDS = {"prompt": str, "chosen": str, "rejected": str}
PAIR_DROP_REASONS = ("no_assistant_turn", "prompt_mismatch", "empty_response", "identical_responses")
PROXY_SUBSET = "harmless-base"
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_SPACES = re.compile(r" {2,}")


def imdb_path(split: str) -> Path:
    return paths.RAW / "imdb" / f"imdb_{split}.jsonl.gz"


def hh_path(subset: str) -> Path:
    return paths.RAW / "hh-rlhf" / subset / "test.jsonl.gz"


def prepared_file(task: str, split: str) -> Path:
    """`data/prepared/{task}/{split}.jsonl` (vader: train/test; hh, toxic: finetune/heldout)."""
    return paths.PREPARED / task / f"{split}.jsonl"


def seeded_rank(seed: int, salt: str, key: str) -> int:
    """A stable pseudo-random rank for `key`: the same (seed, salt, key) always gives the same int."""
    digest = hashlib.blake2b(f"{seed}:{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def subsample(rows: list[dict[str, Any]], limit: int, seed: int, salt: str) -> list[dict[str, Any]]:
    """Keep `limit` rows (0 = all) chosen by seeded hash of their id, in their original order."""
    if limit <= 0 or len(rows) <= limit:
        return rows
    keep = set(sorted(range(len(rows)), key=lambda i: seeded_rank(seed, salt, rows[i]["id"]))[:limit])
    return [row for i, row in enumerate(rows) if i in keep]


def split_heldout(rows: list[dict[str, Any]], fraction: float, seed: int, salt: str) -> tuple[list, list]:
    """(finetune, heldout): the round(fraction * n) ids with the smallest seeded hash are held out.

    Both sides keep at least one row when n >= 2, so neither DPO nor the probe gets an empty file.
    """
    n = len(rows)
    n_held = min(max(round(fraction * n), 1), n - 1) if n >= 2 else n
    order = sorted(range(n), key=lambda i: seeded_rank(seed, salt, rows[i]["id"]))
    held = set(order[:n_held])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


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
            drops["vader_empty_text"] += 1
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


def read_toxic_file(path: Path) -> tuple[list[dict[str, Any]], collections.Counter]:
    """Pairs of a local toxic-dpo-v0.2 JSONL; the bare prompt is wrapped as one HH turn."""
    drops: collections.Counter = collections.Counter()
    pairs = []
    for lineno, obj in io.iter_jsonl(path, TOXIC_FIELDS):
        if not obj["prompt"].strip():
            drops["empty_prompt"] += 1
            continue
        prompt = f"{HUMAN} {obj['prompt'].strip()}{ASSISTANT}"
        replies = [r if r[:1].isspace() else f" {r}" for r in (obj["chosen"], obj["rejected"])]
        pair, reason = make_pair(prompt, replies[0], prompt, replies[1])
        if pair is None:
            drops[reason] += 1
            continue
        pairs.append({"key": f"dpo-{lineno - 1:05d}", "subset": "toxic-dpo-v0.2", **pair})
    return pairs, drops


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


def build(params: Params) -> tuple[dict[Path, list[dict[str, Any]]], dict[str, Any]]:
    """Read and validate every raw input; return {output file: rows} and the metrics. Writes nothing."""
    cfg, seed = params.prepare, params.seed
    drops: collections.Counter = collections.Counter({f"{t}_{r}": 0 for t in ("hh", "toxic") for r in PAIR_DROP_REASONS})
    drops["vader_empty_text"] = 0
    outputs: dict[Path, list[dict[str, Any]]] = {}
    metrics: dict[str, Any] = {}

    for split, limit in (("train", cfg.imdb_train_limit), ("test", cfg.imdb_test_limit)):
        rows = read_imdb(split, drops)
        metrics[f"imdb_{split}_raw"] = len(rows)
        outputs[prepared_file("vader", split)] = subsample(rows, limit, seed, f"imdb-{split}")

    subsets: dict[str, list[dict[str, Any]]] = {}
    for subset in dict.fromkeys([*cfg.hh_subsets, *([PROXY_SUBSET] if cfg.toxic_source == "proxy" else [])]):
        subsets[subset], sub_drops = read_hh_subset(subset)
        if subset in cfg.hh_subsets:
            drops.update({f"hh_{k}": v for k, v in sub_drops.items()})
        if subset == PROXY_SUBSET and cfg.toxic_source == "proxy":
            drops.update({f"toxic_{k}": v for k, v in sub_drops.items()})

    hh = pair_rows("hh", [p for s in cfg.hh_subsets for p in subsets[s]], swap=False, proxy=None)
    toxic_is_proxy = cfg.toxic_source == "proxy"
    if toxic_is_proxy:
        toxic = pair_rows("toxic", subsets[PROXY_SUBSET], swap=True, proxy=True)
    else:
        toxic_pairs, tox_drops = read_toxic_file(Path(cfg.toxic_source))
        drops.update({f"toxic_{k}": v for k, v in tox_drops.items()})
        toxic = pair_rows("toxic", toxic_pairs, swap=False, proxy=False)

    for task, rows, fraction in (("hh", hh, cfg.hh_heldout_fraction), ("toxic", toxic, cfg.toxic_heldout_fraction)):
        if len(rows) < 2:
            raise DataError(f"prepare: only {len(rows)} valid {task} pairs after validation; need at least 2")
        metrics[f"{task}_valid_pairs"] = len(rows)
        finetune, heldout = split_heldout(subsample(rows, cfg.max_pairs, seed, f"{task}-limit"), fraction, seed, f"{task}-split")
        outputs[prepared_file(task, "finetune")] = finetune
        outputs[prepared_file(task, "heldout")] = heldout

    for path, rows in outputs.items():
        metrics[f"{path.parent.name}_{path.stem}"] = len(rows)
    metrics["toxic_is_proxy"] = toxic_is_proxy
    metrics["dropped"] = dict(sorted(drops.items()))
    return outputs, metrics


def write_outputs(outputs: dict[Path, list[dict[str, Any]]]) -> None:
    """Write every task folder through `atomic_dir`; the folders are swapped in only at the end."""
    with contextlib.ExitStack() as stack:
        tmp_dirs: dict[Path, Path] = {}
        for path in outputs:
            if path.parent not in tmp_dirs:
                tmp_dirs[path.parent] = stack.enter_context(io.atomic_dir(path.parent))
        for path, rows in outputs.items():
            io.write_jsonl(tmp_dirs[path.parent] / path.name, rows)


def run(params: Params, model: str | None = None, task: str | None = None) -> None:
    """Validate the raw data and write data/prepared/ + reports/runs/prepare.json.

    Validation runs before the MLflow run opens: bad raw data fails in seconds and leaves no run.
    """
    cfg = params.prepare
    proxy = cfg.toxic_source == "proxy"
    tags = {"toxic_source": "proxy" if proxy else "local", "proxy": proxy}
    if proxy:
        log.warning("prepare: toxic task uses the PROXY (harmless-base pairs with chosen/rejected swapped), "
                    "not unalignment/toxic-dpo-v0.2; set prepare.toxic_source to a local toxic-dpo JSONL to change it")
    outputs, metrics = build(params)
    with stage_run("prepare", experiment=params.tracking.experiment,
                   params={"seed": params.seed, "prepare": section_dict(cfg)}, tags=tags) as tracker:
        write_outputs(outputs)
        tracker.write_metrics(paths.REPORTS / "runs" / "prepare.json", metrics)
