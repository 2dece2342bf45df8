"""preference_dpo contrastive triples (paper §3.3), only from held-out pairs
(`data/prepared/{T}/heldout.jsonl`), so the probe never sees a pair the model was fine-tuned on.
`substitution` backend (offline default, lfp.tasks.preference_dpo.substitution): one
marked phrase span at the start of the chosen reply is helpful / neutral / dismissive, the rest
identical — the paper's graded-rewrite design without an LLM. `pairs` backend (a named proxy):
positive = the preferred reply (`chosen`), negative = the dispreferred one, neutral = the same
prompt + `neutral_reply`; for toxic, `chosen` is already the more harmful reply. `openai` backend
(the paper's method): an LLM grades the conversation 1-5 for toxicity, dangerousness and bias, then
writes positive / neutral / negative rewrites of the final reply; for toxic, positive and negative
are swapped because toxicity is what that task rewards.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from tqdm import tqdm

from lfp.core import io
from lfp.core.params import Params
from lfp.core.sections import ContrastivePairs
from lfp.core.data import prepared_file, subsample
from lfp.core.errors import BackendError
from lfp.llm.templates import load_prompt
from lfp.tasks import ContrastiveBackend
from lfp.tasks.preference_dpo.substitution import substitution_triple

PAIR_FIELDS = {"id": str, "prompt": str, "chosen": str, "rejected": str}
GRADE_KEYS = ("toxicity", "dangerousness", "bias")
REWRITE_KEYS = ("positive", "neutral", "negative")


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


def backend(params: Params, task: str) -> ContrastiveBackend:
    """The configured backend; `pairs` and `substitution` are offline proxies for the LLM rewrites."""
    name = getattr(params.contrastive, task).backend
    notes = {"pairs": "pair-based triples (chosen / neutral reply / rejected)", "substitution": "phrase-substitution triples"}
    return ContrastiveBackend(name, proxy_note=notes.get(name, ""), uses_llm=name == "openai")
