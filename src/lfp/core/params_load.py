"""params.yaml -> Params, validated on load.

Why: a typo or a wrong value must stop the run with one line naming the key, before any minutes
of compute are spent: types and ranges come from the dataclasses (lfp.core.sections), the checks
across sections are here.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from lfp.core.errors import ConfigError
from lfp.core.params import BUILTIN_MODELS, HUB_ID, KIND_SECTIONS, Params
from lfp.core.sections import TaskSections, TaskSpec

DEFAULT_PARAMS = Path("params.yaml")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    if tp is Any:  # typed later (e.g. task sections, by the task's kind)
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"params: '{key}' has the wrong type")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"params: '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"params: '{key}' must be a list, got {type(value).__name__}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"params: '{key}' must be a mapping, got {type(value).__name__}")
        return {str(k): _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"params: '{key}' must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"params: '{key}' must be a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"params: '{key}' must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"params: '{key}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"params: '{key}' must be a string, got {value!r}")
        return value
    raise ConfigError(f"params: '{key}' has unsupported type {_type_name(tp)}")


def _build(cls: Any, data: Any, prefix: str) -> Any:
    where = prefix or "top level"
    if not isinstance(data, dict):
        raise ConfigError(f"params: '{where}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"params: unknown key '{dotted}'")
    kwargs = {}
    for name, f in fields.items():
        dotted = f"{prefix}.{name}" if prefix else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"params: missing key '{dotted}'")
            continue
        value = _convert(data[name], hints[name], dotted)
        lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if lo is not None and (value < lo or (f.metadata.get("lo_open") and value == lo)):
                op = ">" if f.metadata.get("lo_open") else ">="
                raise ConfigError(f"params: '{dotted}' must be {op} {lo}, got {value}")
            if hi is not None and (value > hi or (f.metadata.get("hi_open") and value == hi)):
                op = "<" if f.metadata.get("hi_open") else "<="
                raise ConfigError(f"params: '{dotted}' must be {op} {hi}, got {value}")
        kwargs[name] = value
    return cls(**kwargs)


def _cross_check(p: Params) -> None:
    if not p.models:
        raise ConfigError("params: 'models' must list at least one model")
    for m in p.models:
        if m not in p.model_specs:
            raise ConfigError(f"params: 'models' names '{m}' but 'model_specs.{m}' is missing")
        src = p.model_specs[m].source
        if src not in BUILTIN_MODELS and not Path(src).is_dir() and not HUB_ID.fullmatch(src):
            raise ConfigError(f"params: 'model_specs.{m}.source' is '{src}': not {' or '.join(BUILTIN_MODELS)}, "
                              "an existing model directory, or a hub id of the form org/name")
    if not p.tasks:
        raise ConfigError("params: 'tasks' must list at least one task")
    for t in p.tasks:
        if t not in p.task_specs:
            raise ConfigError(f"params: 'tasks' names '{t}' but 'task_specs.{t}' is missing")
    if len(set(p.tasks)) != len(p.tasks) or len(set(p.models)) != len(p.models):
        raise ConfigError("params: 'models' and 'tasks' must not repeat names")
    tb = p.tiny_base
    if tb.d_model % tb.n_heads:
        raise ConfigError(f"params: 'tiny_base.d_model' ({tb.d_model}) must be divisible by 'tiny_base.n_heads' ({tb.n_heads})")
    if any(m for m in p.models if p.model_specs[m].source == "tiny") and p.divergence.top_k > tb.n_layers:
        raise ConfigError(
            f"params: 'divergence.top_k' ({p.divergence.top_k}) exceeds 'tiny_base.n_layers' ({tb.n_layers})"
        )
    for t in p.tasks:
        if p.kind(t) != "lexicon_rl":
            continue
        v = p.finetune[t]
        if v.prefix_min_tokens > v.prefix_max_tokens:
            raise ConfigError(f"params: 'finetune.{t}.prefix_min_tokens' must be <= 'prefix_max_tokens'")
        if v.min_new_tokens > v.max_new_tokens:
            raise ConfigError(f"params: 'finetune.{t}.min_new_tokens' must be <= 'max_new_tokens'")
        if v.batch_size % v.num_generations:
            raise ConfigError(f"params: 'finetune.{t}.batch_size' must be a multiple of 'num_generations'")
        if v.batch_size % v.mini_batch_size:
            raise ConfigError(f"params: 'finetune.{t}.batch_size' must be a multiple of 'mini_batch_size'")
    if not p.sae.ratios or any(r < 1 for r in p.sae.ratios):
        raise ConfigError("params: 'sae.ratios' must be a non-empty list of positive integers")
    if p.probe.rescale_low_percentile >= p.probe.rescale_high_percentile:
        raise ConfigError("params: 'probe.rescale_low_percentile' must be < 'rescale_high_percentile'")
    for name, kind in (("review_task", "lexicon_rl"), ("dialogue_task", "preference_dpo")):
        t = getattr(p.explain, name)
        if name == "dialogue_task" and not t:
            continue  # no preference task in this profile: the explanation corpus is all reviews
        if t not in p.tasks or p.kind(t) != kind:
            raise ConfigError(f"params: 'explain.{name}' must name a {kind} task in 'tasks' (dialogue_task may be empty), got '{t}'")
    dialogue = p.tiny_base.dialogue_task
    if dialogue and (dialogue not in p.tasks or p.kind(dialogue) != "preference_dpo"):
        raise ConfigError(f"params: 'tiny_base.dialogue_task' must name a preference_dpo task in 'tasks' or be empty, got '{dialogue}'")
    if dialogue and p.tiny_base.dialogue_texts >= min(p.tiny_base.train_texts, p.tiny_base.tokenizer_texts):
        raise ConfigError("params: 'tiny_base.dialogue_texts' must be < 'tiny_base.train_texts' and 'tokenizer_texts' (the rest are reviews)")
    if p.tiny_base.corpus_task not in p.tasks or p.kind(p.tiny_base.corpus_task) != "lexicon_rl":
        raise ConfigError(f"params: 'tiny_base.corpus_task' must name a lexicon_rl task in 'tasks', got '{p.tiny_base.corpus_task}'")
    for t in p.measure.tasks:
        if t not in p.tasks or p.kind(t) != "lexicon_rl":
            raise ConfigError(f"params: 'measure.tasks' names '{t}', which is not a lexicon_rl task in 'tasks'")
    for t in p.measure.preference_tasks:
        if t not in p.tasks or p.kind(t) != "preference_dpo":
            raise ConfigError(f"params: 'measure.preference_tasks' names '{t}', which is not a preference_dpo task in 'tasks'")
    m = p.measure
    if m.plant == "fixed" and not m.planted_words:
        raise ConfigError("params: 'measure.planted_words' must not be empty when 'measure.plant' is fixed")
    if m.plant == "drawn":
        if m.plant_lexicon_words + m.plant_neutral_words < 1:
            raise ConfigError("params: 'measure.plant_lexicon_words' + 'measure.plant_neutral_words' must be >= 1 (a plant needs a word)")
        for part in ("lexicon", "neutral"):
            n, pool = getattr(m, f"plant_{part}_words"), getattr(m, f"plant_{part}_pool")
            if n and pool < n + 2:
                raise ConfigError(f"params: 'measure.plant_{part}_pool' ({pool}) must exceed 'measure.plant_{part}_words' ({n}) "
                                  "by 2 or more: the undrawn pool words are the plant's controls")
    for name, spec in p.task_specs.items():
        _check_raw(name, spec)
    if p.measure.tasks:  # checked here, not minutes into `measure` (after measure_pairs and its fine-tunes)
        _check_planted_words(p.measure.planted_words)
        if not p.probe.base_control:
            raise ConfigError("params: 'probe.base_control' must be true when 'measure.tasks' is not empty "
                              "(the measure stage reads the probe's base-model codes)")
    for t in p.tasks:
        if t not in p.explain.task_descriptions:
            raise ConfigError(f"params: 'explain.task_descriptions.{t}' is missing")


def _check_raw(name: str, spec: TaskSpec) -> None:
    """`task_specs.<t>.raw` (a DVC dep) must contain what the task's kind reads (lfp.core.corpora's layout)."""
    if not spec.raw:
        return
    if spec.source == "imdb":
        reads = ["data/raw/imdb"]
    elif spec.source == "hh-rlhf":
        reads = [f"data/raw/hh-rlhf/{subset}" for subset in spec.subsets]
    else:
        reads = [spec.source]
    raw = os.path.normpath(spec.raw)
    for path in map(os.path.normpath, reads):
        if path != raw and not path.startswith(raw.rstrip(os.sep) + os.sep):
            raise ConfigError(f"params: 'task_specs.{name}.raw' is '{spec.raw}', which does not contain {path} "
                              "that the task reads (DVC would not re-run its prepare when that changes)")


def _check_planted_words(words: list[str]) -> None:
    """Every planted word must be in the VADER lexicon (the planted reward flips its sign)."""
    from lfp.core.vader_lexicon import lexicon  # a ~7.5k-line text file, read once (ms)

    lex = lexicon()
    for i, word in enumerate(words):
        if word not in lex:
            hint = f" (the lexicon has '{word.lower()}')" if word.lower() in lex else ""
            raise ConfigError(f"params: 'measure.planted_words[{i}]' is '{word}', which is not in the VADER lexicon{hint}")


def _typed_task_sections(p: Params) -> Params:
    """Build `finetune.<task>` and `contrastive.<task>` with the section types of the task's kind
    (a missing section takes that kind's defaults); sections of tasks not in `tasks` are ignored."""
    for task, spec in p.task_specs.items():
        if spec.kind not in KIND_SECTIONS:
            raise ConfigError(f"params: 'task_specs.{task}.kind' must be one of {list(KIND_SECTIONS)}, got {spec.kind!r}")
    sections: dict[str, TaskSections] = {}
    for name, index in (("finetune", 0), ("contrastive", 1)):
        raw = getattr(p, name)
        out = TaskSections()
        for key, value in raw.items():
            spec = p.task_specs.get(key)
            if spec is None:
                raise ConfigError(f"params: '{name}.{key}' names no task in 'task_specs'")
            out[key] = _build(KIND_SECTIONS[spec.kind][index], value if value is not None else {}, f"{name}.{key}")
        for task in p.tasks:
            if task not in out and task in p.task_specs:
                out[task] = KIND_SECTIONS[p.task_specs[task].kind][index]()
        sections[name] = out
    return dataclasses.replace(p, **sections)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_params(path: str | os.PathLike[str] | None = None) -> Params:
    """Read and validate params (default: $LFP_PARAMS or ./params.yaml)."""
    p = Path(path or os.environ.get("LFP_PARAMS") or DEFAULT_PARAMS)
    if not p.is_file():
        raise ConfigError(f"{p}: params file not found")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    try:
        params = _typed_task_sections(_build(Params, data or {}, ""))
        _cross_check(params)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("params:", f"{p}:", 1)) from None
    return params
