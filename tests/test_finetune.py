"""finetune stage: GRPO on the VADER reward and DPO on pairs, on the conftest tiny model (seconds)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lfp.tasks.preference_dpo import dpo
from lfp.core import io, paths
from lfp.tasks.lexicon_rl import reward, rl
from lfp.models.loading import load_model
from lfp.stages import finetune
from lfp.tasks import finetuning

from conftest import SAMPLE_TEXTS

VADER_KEYS = {"reward_base", "reward_finetuned", "reward_gain", "kl_to_base", "beats_base", "train_seconds"}
DPO_KEYS = {"reward_accuracy_base", "reward_accuracy_finetuned", "reward_margin_base", "reward_margin_finetuned",
            "implicit_reward_accuracy", "implicit_reward_margin", "dpo_loss_base", "dpo_loss_finetuned", "beats_base", "train_seconds"}


def _reviews(split: str, n: int) -> list[dict]:
    """Reviews longer than the micro profile's min_review_chars (200)."""
    rows = []
    for i in range(n):
        text = " ".join(SAMPLE_TEXTS[(i + k) % 6] for k in range(5))
        rows.append({"id": f"imdb-{split}-{i:06d}", "text": text, "label": i % 2})
    rows.append({"id": f"imdb-{split}-short", "text": "Too short.", "label": 0})
    return rows


def _pairs(task: str, split: str, n: int, proxy: bool) -> list[dict]:
    rows = []
    for i in range(n):
        row = {"id": f"{task}-{split}-{i:05d}", "prompt": f"\n\nHuman: Bread {i} {split}?\n\nAssistant:",
               "chosen": " Mix flour, water, yeast and salt.", "rejected": " I hated every minute of this awful movie.",
               "subset": "harmless-base"}
        if proxy:
            row["proxy"] = True
        rows.append(row)
    return rows


@pytest.fixture()
def project(in_tmp_project: Path, tiny_model_dir: Path) -> Path:
    """A temp project with models/base/tiny and data/prepared/{vader,hh,toxic}."""
    shutil.copytree(tiny_model_dir, paths.base_model_dir("tiny"))
    io.write_jsonl(paths.PREPARED / "vader" / "train.jsonl", _reviews("train", 40))
    io.write_jsonl(paths.PREPARED / "vader" / "test.jsonl", _reviews("test", 20))
    for task in ("hh", "toxic"):
        train, heldout = _pairs(task, "ft", 24, task == "toxic"), _pairs(task, "ho", 20, task == "toxic")
        train.append({**heldout[0], "id": f"{task}-leaked"})  # same content as a held-out pair: must be dropped
        train.append({**train[0], "id": f"{task}-long", "prompt": "\n\nHuman:" + " bread" * 200 + "\n\nAssistant:"})
        io.write_jsonl(paths.PREPARED / task / "finetune.jsonl", train)
        io.write_jsonl(paths.PREPARED / task / "heldout.jsonl", heldout)
    return in_tmp_project


def _mlflow_run(task: str):
    import mlflow

    runs = mlflow.search_runs(experiment_names=["lfp"], filter_string=f"tags.stage = 'finetune' and tags.task = '{task}'", output_format="list")
    assert len(runs) == 1
    return runs[0]


# ------------------------------------------------------------------------------------------ vader


def test_grpo_stage_trains_saves_and_reports(project: Path, micro_params, monkeypatch: pytest.MonkeyPatch) -> None:
    scored: list[list[str]] = []
    real = reward.vader_reward

    def spy(texts, lex=None):
        texts = list(texts)
        scored.append(texts)
        return real(texts, lex)

    monkeypatch.setattr(reward, "vader_reward", spy)
    cfg = dataclasses.replace(micro_params.finetune.vader, eval_prompts=micro_params.finetune.vader.batch_size - 2)
    params = dataclasses.replace(micro_params, finetune=micro_params.finetune.replace(vader=cfg))
    finetune.run(params, "tiny", "vader")

    # the trainer called lfp.tasks.lexicon_rl.reward.vader_reward once per generation batch, on prefix + completion;
    # the evaluation once per model (base, fine-tuned) on the held-out prefixes
    train_calls = [t for t in scored if len(t) == cfg.batch_size]
    assert len(train_calls) == cfg.steps and [len(t) for t in scored[cfg.steps:]] == [cfg.eval_prompts] * 2
    _, tok = load_model(paths.base_model_dir("tiny"))
    prefixes = set(rl.make_prefixes(rl.long_reviews(_reviews("train", 40), 200, Path("x")), tok, cfg, cfg.train_prompts, micro_params.seed))
    for text in train_calls[0]:
        prefix = next((p for p in prefixes if text.startswith(p)), None)
        assert prefix is not None and len(text) > len(prefix)

    model, tokenizer = load_model(paths.finetuned_dir("tiny", "vader"))
    assert tokenizer.eos_token is not None and model.config.model_type == "gpt_neox"
    assert list(paths.finetuned_dir("tiny", "vader").glob("*.safetensors"))
    metrics = io.read_json(finetuning.metrics_file("tiny", "vader"))
    assert VADER_KEYS <= set(metrics)
    assert metrics["kl_to_base"] > 0 and isinstance(metrics["beats_base"], bool)
    assert metrics["beats_base"] == (metrics["reward_finetuned"] > metrics["reward_base"])
    run = _mlflow_run("vader")
    assert run.data.tags["rl_algorithm"] == "grpo" and run.data.tags["paper_algorithm"] == "ppo"
    assert run.data.metrics["reward_gain"] == pytest.approx(metrics["reward_gain"])
    import mlflow

    curve = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/reward")
    assert len(curve) == cfg.steps * cfg.batch_size // cfg.mini_batch_size


def test_reward_fn_scores_prefix_plus_completion_or_completion_only(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(reward, "vader_reward", lambda texts, lex=None: seen.append(list(texts)) or [0.0] * len(seen[-1]))
    rl.make_reward_fn(False)(prompts=["I loved", "It was"], completions=[" it.", " bad."])
    rl.make_reward_fn(True)(prompts=["I loved", "It was"], completions=[" it.", " bad."])
    assert seen == [["I loved it.", "It was bad."], [" it.", " bad."]]
    assert rl.make_reward_fn(False).__name__ == "vader_reward"


def test_grpo_config_maps_ppo_hyperparameters(micro_params, tmp_path: Path) -> None:
    cfg = dataclasses.replace(micro_params.finetune.vader, batch_size=16, mini_batch_size=4, ppo_epochs=2, steps=3)
    args = rl.grpo_config(cfg, str(tmp_path), seed=0, num_processes=1, bf16=False)
    assert args.generation_batch_size == 16 and args.per_device_train_batch_size == 4
    assert args.steps_per_generation == 4 and args.num_iterations == 2 and args.max_steps == 3 * 4 * 2
    assert args.beta == cfg.beta and args.epsilon == cfg.clip_epsilon and args.max_grad_norm == cfg.max_grad_norm
    assert args.generation_kwargs == {"min_new_tokens": cfg.min_new_tokens}
    assert args.max_completion_length == cfg.max_new_tokens and args.top_k == 0 and args.top_p == 1.0
    assert not args.bf16 and not args.fp16 and args.report_to == [] and args.save_strategy == "no"


def test_prefixes_are_seeded_and_within_token_bounds(tiny_model_dir: Path, micro_params) -> None:
    _, tok = load_model(tiny_model_dir)
    cfg = micro_params.finetune.vader
    rows = _reviews("train", 30)[:-1]
    a = rl.make_prefixes(rows, tok, cfg, 20, seed=0)
    assert a == rl.make_prefixes(rows, tok, cfg, 20, seed=0) and a != rl.make_prefixes(rows, tok, cfg, 20, seed=1)
    for p in a:
        assert cfg.prefix_min_tokens <= len(tok(p, add_special_tokens=False)["input_ids"]) <= cfg.prefix_max_tokens + 1


def test_sampling_respects_min_and_max_new_tokens_and_kl_is_zero_for_same_model(tiny_model_dir: Path, micro_params) -> None:
    model, tok = load_model(tiny_model_dir)
    cfg = micro_params.finetune.vader
    s = rl.sample(model, tok, ["This movie", "The film was terrible"], cfg, seed=0, device="cpu", batch_size=1)
    lengths = s.completion_mask.sum(dim=1)
    assert (lengths >= cfg.min_new_tokens).all() and (lengths <= cfg.max_new_tokens).all()
    again = rl.sample(model, tok, ["This movie", "The film was terrible"], cfg, seed=0, device="cpu", batch_size=1)
    assert torch.equal(s.sequences, again.sequences)
    assert rl.mean_token_kl(model, model, s, "cpu", 2) == pytest.approx(0.0, abs=1e-6)
    other, _ = load_model(tiny_model_dir)
    with torch.no_grad():
        other.get_output_embeddings().weight.add_(0.5 * torch.randn_like(other.get_output_embeddings().weight))
    assert rl.mean_token_kl(other, model, s, "cpu", 2) > 1e-3


def test_completion_mask_stops_after_first_eos() -> None:
    ids = torch.tensor([[5, 0, 7, 0], [5, 6, 7, 8]])
    assert rl._completion_mask(ids, eos_id=0).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


# ------------------------------------------------------------------------------------------ DPO


@pytest.mark.parametrize("task", ["hh", "toxic"])
def test_dpo_stage_trains_without_heldout_pairs(project: Path, micro_params, task: str, monkeypatch: pytest.MonkeyPatch) -> None:
    trained_on: list[dict] = []
    real_train = dpo.train

    def spy(model, tokenizer, rows, args):
        trained_on.extend(rows)
        return real_train(model, tokenizer, rows, args)

    monkeypatch.setattr(dpo, "train", spy)
    finetune.run(micro_params, "tiny", task)

    heldout = io.read_jsonl(paths.PREPARED / task / "heldout.jsonl")
    keys = {(r["prompt"], r["chosen"], r["rejected"]) for r in heldout}
    assert trained_on and not any(r["id"] in {h["id"] for h in heldout} or (r["prompt"], r["chosen"], r["rejected"]) in keys for r in trained_on)
    metrics = io.read_json(finetuning.metrics_file("tiny", task))
    assert DPO_KEYS <= set(metrics)
    assert metrics["train_pairs_excluded_heldout"] == 1 and metrics["train_pairs_cut_to_context"] == 1  # cut, not dropped
    assert metrics["train_pairs"] == 25 and metrics["eval_pairs"] == micro_params.finetune.hh.eval_pairs
    assert metrics["optimizer_steps"] == micro_params.finetune.hh.steps
    model, _ = load_model(paths.finetuned_dir("tiny", task))
    assert model.config.model_type == "gpt_neox"
    run = _mlflow_run(task)
    assert run.data.tags["rl_algorithm"] == "dpo"
    assert run.data.tags["data_is_proxy"] == str(task == "toxic")  # from the rows' `proxy` flag, not the task name


def test_exclude_heldout_drops_by_id_and_by_content() -> None:
    held = _pairs("hh", "ho", 3, False)
    train = _pairs("hh", "ft", 3, False) + [dict(held[0]), {**held[1], "id": "other"}]
    kept, dropped = dpo.exclude_heldout(train, held)
    assert dropped == 2 and [r["id"] for r in kept] == [r["id"] for r in train[:3]]


def test_preference_metrics_definitions() -> None:
    base = (np.array([-10.0, -10.0, -10.0, -10.0]), np.array([-12.0, -8.0, -9.0, -11.0]))  # prefers chosen on 2/4
    ft = (np.array([-9.0, -7.0, -9.0, -12.0]), np.array([-12.0, -8.0, -10.0, -11.0]))  # prefers chosen on 3/4
    m = dpo.preference_metrics(base, ft, beta=0.1)
    assert m["reward_accuracy_base"] == 0.5 and m["reward_accuracy_finetuned"] == 0.75 and m["beats_base"] is True
    assert m["reward_margin_base"] == pytest.approx(0.1 * np.mean([2, -2, -1, 1]))
    assert m["reward_margin_finetuned"] == pytest.approx(0.1 * np.mean([3, 1, 1, -1]))
    assert m["implicit_reward_margin"] == pytest.approx(m["reward_margin_finetuned"] - m["reward_margin_base"])
    assert m["implicit_reward_accuracy"] == 0.75  # per-pair implicit margins: 1, 3, 2, -2 (x beta)
    assert m["dpo_loss_base"] == pytest.approx(np.log(2))
    assert m["dpo_loss_finetuned"] == pytest.approx(np.mean(np.log1p(np.exp(-0.1 * np.array([1, 3, 2, -2])))))
    assert dpo.preference_metrics(ft, base, beta=0.1)["beats_base"] is False


def test_response_log_probs_match_a_manual_sum(tiny_model_dir: Path) -> None:
    model, tok = load_model(tiny_model_dir)
    prompt, response = "Human: How do I bake bread? Assistant:", " Mix flour."
    ids, start = dpo.encode(tok, prompt, response)
    assert ids[-1] == tok.eos_token_id and start > 0
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0], dim=-1)
    manual = sum(float(logp[t - 1, ids[t]]) for t in range(start, len(ids)))
    got = dpo.response_log_probs(model, tok, [prompt, "x"], [response, " a much longer reply to pad the batch"], "cpu", 2)
    assert got[0] == pytest.approx(manual, rel=1e-5)


def test_missing_base_model_is_a_clear_error(in_tmp_project: Path, micro_params) -> None:
    from lfp.core.errors import ArtifactError

    with pytest.raises(ArtifactError, match="models/base/tiny"):
        finetune.run(micro_params, "tiny", "hh")


def test_precision_fp32_never_bf16_always_auto_by_measured_speedup(monkeypatch: pytest.MonkeyPatch):
    """`auto` trains in bf16 only where a training step of the model measures >= AUTO_BF16_SPEEDUP faster
    on this CPU; the choice and the measured speed-up are tags; bf16 on a CPU tells transformers use_cpu."""
    from types import SimpleNamespace

    from lfp.tasks import finetuning
    from lfp.tasks.lexicon_rl.rl import trainer_defaults

    wide, narrow = SimpleNamespace(width=576), SimpleNamespace(width=64)
    monkeypatch.setattr(finetuning, "on_cpu", lambda: True)
    monkeypatch.setattr(finetuning, "bf16_step_speedup", lambda model: 1.8 if model.width >= 512 else 0.67)
    assert not finetuning.use_bf16("fp32", wide) and finetuning.use_bf16("bf16", narrow)
    assert finetuning.use_bf16("auto", wide) and not finetuning.use_bf16("auto", narrow)
    assert finetuning.precision_tags(True, "auto", wide) == {"precision": "bf16", "precision_param": "auto", "cpu_bf16_step_speedup": 1.8}
    assert finetuning.precision_tags(False, "fp32", narrow) == {"precision": "fp32", "precision_param": "fp32"}
    assert trainer_defaults(0, True)["use_cpu"] and not trainer_defaults(0, False)["use_cpu"]


def test_bf16_step_speedup_times_the_model_itself_and_leaves_training_untouched(tiny_model_dir):
    """A positive ratio, cached per model shape; the global RNG state, the train/eval mode and the
    gradients are as before (the timing must not change a seeded fine-tune)."""
    from lfp.models.loading import load_model
    from lfp.tasks import finetuning

    model, _ = load_model(tiny_model_dir)
    model.eval()
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    ratio = finetuning.bf16_step_speedup(model, repeats=1)
    assert ratio > 0 and torch.equal(torch.random.get_rng_state(), before)
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert finetuning.bf16_step_speedup(model) == ratio  # measured once per shape
