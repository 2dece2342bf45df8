"""Every stage runs its models on the device Accelerate picks (issue #9; docs/DESIGN.md "Devices").

How: `accelerate.Accelerator` (and, for finetune, the trainer's accelerator) is replaced by a fake
whose `.device` is `meta` — a device this CPU-only machine has, that no code reaches by accident
and whose tensors hold no data. While a stage runs, spies check every module call (arguments and
the module's own weights), every SAE encode/decode, every `generate` and every `Module.to(device)`:
anything that is not on `meta` fails the test at once (DeviceLeak), naming the module. A stage that
honours the device therefore runs on meta until its first read of a value — copying results to
numpy, `float(loss)` — and the test checks it stopped *there*, for that reason (meta holds no
data), in the expected function, after the expected models/SAEs were moved to meta.

Meta tensors cannot be read, so two data-dependent shortcuts are switched off: transformers'
check "is the attention mask all ones?" (meta tensors are treated like traced ones, which skips
it) and boolean-mask indexing (torch assumes every element is selected). Sampling cannot run on
meta at all: `generate` is checked (model and inputs on meta) and then stopped (GenerateReached).
Helpers a stage reaches only after its first read are checked directly on a model already on meta.

A static check completes it: no device literal ("cuda", "cpu", ...), `.cuda()` or `torch.cuda.*`
in src/lfp outside the listed, justified exceptions.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import re
import shutil
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

import lfp
from lfp.validation import ablation
from lfp.tasks.preference_dpo import dpo
from lfp.tasks.lexicon_rl import finetune as lexicon_finetune
from lfp.tasks.preference_dpo import finetune as preference_finetune
from lfp.tasks.lexicon_rl import generation, rl
from lfp.core import io, paths, stage_context
from lfp.core.sections import ModelSpec, TinyBase
from lfp.models import snapshot, tiny
from lfp.models.loading import load_model
from lfp.sae import SparseAutoencoder
from lfp.stages import activations, base, explain, finetune, probe, sae as sae_stage, validate

from conftest import SAMPLE_TEXTS

META = torch.device("meta")
LFP_SRC = Path(lfp.__file__).resolve().parent
STAGE_MODULES = (activations, base, explain, finetune, probe, sae_stage, validate)
# the errors a meta tensor raises when its (absent) data is read: the only acceptable way to stop
NO_DATA = re.compile(r"Cannot copy out of meta tensor|cannot be called on meta tensors|can't convert meta device type tensor to numpy")


COMPREHENSIONS = {"<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>"}  # own frames before Python 3.12


class DeviceLeak(AssertionError):
    """A model, SAE or input was not on the device Accelerate picked."""


class GenerateReached(Exception):
    """`generate` was called with the model and its inputs on meta (sampling cannot run there)."""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------
# the spy
# --------------------------------------------------------------------------------------------


def _tensors(obj: Any, depth: int = 0):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth < 3 and isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item, depth + 1)
    elif depth < 3 and isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item, depth + 1)


@dataclasses.dataclass
class Spy:
    accelerators: int = 0  # Accelerator() instances the stage created
    moved: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # class -> .to(meta) calls
    ran: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # what ran (all on meta)

    def check(self, what: str, tensors: Any, module: torch.nn.Module | None = None, recurse: bool = False) -> None:
        found = list(_tensors(tensors))
        if module is not None:
            found += list(module.parameters(recurse=recurse)) + list(module.buffers(recurse=recurse))
        bad = sorted({str(t.device) for t in found if t.device != META})
        if bad:
            raise DeviceLeak(f"{what} ran with tensors on {bad}, not on the device Accelerate picked (meta)")
        self.ran[what] += 1


@pytest.fixture()
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spy]:
    """Accelerate picks `meta`; module calls, SAE codes, generate and Module.to are checked."""
    import accelerate
    import torch.fx.experimental._config as fx_config
    import transformers.masking_utils as masking
    from transformers.generation.utils import GenerationMixin

    s = Spy()

    class FakeAccelerator:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            s.accelerators += 1

        @property
        def device(self) -> torch.device:
            return META

    monkeypatch.setattr(accelerate, "Accelerator", FakeAccelerator)
    for mod in STAGE_MODULES:  # a stage importing Accelerator at module level must get the fake too
        if hasattr(mod, "Accelerator"):
            monkeypatch.setattr(mod, "Accelerator", FakeAccelerator)

    # meta tensors have no values: let transformers skip its data-dependent mask shortcut, as it
    # does for traced tensors, and let boolean indexing assume every element is selected
    is_tracing = masking.is_tracing
    monkeypatch.setattr(masking, "is_tracing", lambda t: is_tracing(t) or (isinstance(t, torch.Tensor) and t.device == META))

    module_call = torch.nn.Module.__call__

    def call(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        s.check(type(self).__name__, (args, kwargs), self)
        return module_call(self, *args, **kwargs)

    module_to = torch.nn.Module.to

    def to(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None and device != META:
            raise DeviceLeak(f"{type(self).__name__}.to({device}): not the device Accelerate picked (meta)")
        out = module_to(self, *args, **kwargs)
        if device is not None:
            s.moved[type(self).__name__] += 1
        return out

    def codes(name: str) -> Callable[..., torch.Tensor]:
        real = getattr(SparseAutoencoder, name)

        def wrapped(self: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
            s.check(f"SparseAutoencoder.{name}", x, self)
            return real(self, x)

        return wrapped

    def generate(self: Any, *args: Any, **kwargs: Any) -> Any:
        s.check(f"{type(self).__name__}.generate", (args, kwargs), self, recurse=True)
        raise GenerateReached(f"{type(self).__name__}.generate")

    monkeypatch.setattr(torch.nn.Module, "__call__", call)
    monkeypatch.setattr(torch.nn.Module, "to", to)
    monkeypatch.setattr(SparseAutoencoder, "encode", codes("encode"))
    monkeypatch.setattr(SparseAutoencoder, "decode", codes("decode"))
    monkeypatch.setattr(GenerationMixin, "generate", generate)
    with fx_config.patch(meta_nonzero_assume_all_nonzero=True):
        yield s


@pytest.fixture()
def no_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages stop half-way here: skip the MLflow runs (not device related, and slow to open)."""
    import contextlib

    import lfp.core.tracking

    class NullRun:
        def __getattr__(self, name: str) -> Callable[..., None]:
            return lambda *args, **kwargs: None

    @contextlib.contextmanager
    def stage_run(*args: Any, **kwargs: Any):
        yield NullRun()

    monkeypatch.setattr(lfp.core.tracking, "stage_run", stage_run)
    for mod in (*STAGE_MODULES, stage_context):  # open_stage (lfp.core.stage_context) opens the run for most stages
        if hasattr(mod, "stage_run"):
            monkeypatch.setattr(mod, "stage_run", stage_run)


def stops_on_meta(where: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> BaseException:
    """Run `fn`; it must stop in `where` ("file.py:function" under src/lfp) because it read a meta
    tensor (or sampled on meta) — not from a device mismatch, a DeviceLeak or anything else."""
    with pytest.raises((RuntimeError, NotImplementedError, TypeError, GenerateReached)) as info:
        fn(*args, **kwargs)
    err = info.value
    assert isinstance(err, GenerateReached) or NO_DATA.search(str(err)), f"stopped for another reason: {err!r}"
    frames = [f for f in traceback.extract_tb(info.tb)
              if Path(f.filename).resolve().is_relative_to(LFP_SRC) and f.name not in COMPREHENSIONS]
    assert frames, "the error was not raised inside lfp"
    last = f"{Path(frames[-1].filename).resolve().relative_to(LFP_SRC).as_posix()}:{frames[-1].name}"
    assert last == where, f"stopped in {last} ({frames[-1].line!r}), expected {where}: {err!r}"
    return err


def tiny_on_meta(model_dir: Path) -> tuple[Any, Any]:
    model, tok = load_model(model_dir)
    return model.to(META), tok


def meta_saes(layers: list[int], d: int) -> dict[int, SparseAutoencoder]:
    out = {}
    for layer in layers:
        sae = SparseAutoencoder(d, d, tied=True)
        sae.reset_parameters(torch.Generator().manual_seed(layer))
        out[layer] = sae.to(META).eval()
    return out


# --------------------------------------------------------------------------------------------
# base
# --------------------------------------------------------------------------------------------

SMALL_TINY = TinyBase(vocab_size=300, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_length=16, tokenizer_texts=60,
                      train_texts=60, heldout_texts=10, steps=2, batch_size=4, learning_rate=0.01, warmup_steps=1)


def test_base_builds_the_tiny_model_on_accelerates_device(spy: Spy, micro_params, tmp_path: Path) -> None:
    params = dataclasses.replace(micro_params, tiny_base=SMALL_TINY)
    splits = base.split_texts(SAMPLE_TEXTS, SMALL_TINY, 0, tmp_path)
    stops_on_meta("models/heldout.py:heldout_loss", tiny.build_tiny, params, splits, tmp_path / "out")
    assert spy.accelerators == 1
    assert spy.moved["GPTNeoXForCausalLM"] == 1
    assert spy.ran["GPTNeoXForCausalLM"] >= 1 and spy.ran["Embedding"] >= 1


def test_base_snapshot_scores_on_accelerates_device(spy: Spy, tiny_model_dir: Path, tmp_path: Path) -> None:
    held = base.split_texts(SAMPLE_TEXTS, SMALL_TINY, 0, tmp_path)[2]
    stops_on_meta("models/heldout.py:heldout_loss", snapshot.snapshot, ModelSpec(source=str(tiny_model_dir)), SMALL_TINY, held, tmp_path / "out")
    assert spy.accelerators == 1
    assert spy.moved["GPTNeoXForCausalLM"] == 1 and spy.ran["GPTNeoXForCausalLM"] >= 1


# --------------------------------------------------------------------------------------------
# activations, sae
# --------------------------------------------------------------------------------------------


def test_activations_stage_runs_on_accelerates_device(spy: Spy, no_mlflow, in_tmp_project: Path, tiny_model_dir: Path,
                                                      micro_params) -> None:
    io.write_jsonl(paths.PREPARED / "vader" / "train.jsonl",
                   [{"id": f"imdb-train-{i}", "text": SAMPLE_TEXTS[i], "label": i % 2} for i in range(30)])
    shutil.copytree(tiny_model_dir, paths.finetuned_dir("tiny", "vader"))
    io.write_json(paths.report_dir("tiny", "vader") / "divergence.json", {"chosen_layers": [1, 4]})
    stops_on_meta("models/activation_cache.py:cache_activations", activations.run, micro_params, "tiny", "vader")
    assert spy.accelerators == 1
    assert spy.moved["GPTNeoXForCausalLM"] == 1
    assert spy.ran["GPTNeoXModel"] >= 1 and spy.ran["GPTNeoXMLP"] >= 6  # the whole body ran, on meta


def test_sae_stage_scores_cross_entropy_on_accelerates_device(spy: Spy, no_mlflow, in_tmp_project: Path, tiny_model_dir: Path,
                                                              micro_params) -> None:
    layers, d, n_texts, per_text = [1, 4], 32, 10, 6
    folder = paths.activations_dir("tiny", "vader")
    folder.mkdir(parents=True)
    n_rows = n_texts * per_text
    rng = np.random.default_rng(0)
    for layer in layers:
        np.save(folder / f"layer{layer}.npy", rng.normal(size=(n_rows, d)).astype(np.float32))
    np.save(folder / "input_ids.npy", rng.integers(1, 200, size=n_rows).astype(np.int64))
    io.write_json(folder / "index.json", {"layers": layers, "n_rows": n_rows, "d_model": d, "n_texts": n_texts,
                                          "text_offsets": list(range(0, n_rows + 1, per_text))})
    shutil.copytree(tiny_model_dir, paths.finetuned_dir("tiny", "vader"))
    stops_on_meta("sae/quality.py:cross_entropy", sae_stage.run, micro_params, "tiny", "vader")
    assert spy.accelerators == 1
    assert spy.moved["GPTNeoXForCausalLM"] == 1 and spy.ran["GPTNeoXForCausalLM"] >= 1


# --------------------------------------------------------------------------------------------
# probe
# --------------------------------------------------------------------------------------------


def test_probe_stage_computes_codes_on_accelerates_device(spy: Spy, no_mlflow, in_tmp_project: Path, tiny_model_dir: Path,
                                                          micro_params) -> None:
    from test_probe import LAYERS, write_fake_upstream

    write_fake_upstream(in_tmp_project, tiny_model_dir, "hh")
    stops_on_meta("measure/probe_codes.py:element_codes_sets", probe.run, micro_params, "tiny", "hh")
    assert spy.accelerators == 1
    assert spy.moved["SparseAutoencoder"] == len(LAYERS) and spy.moved["GPTNeoXForCausalLM"] == 1
    assert spy.ran["GPTNeoXModel"] >= 1 and spy.ran["SparseAutoencoder.encode"] >= len(LAYERS)


def test_probe_controls_follow_the_models_device(spy: Spy, no_mlflow, in_tmp_project: Path, tiny_model_dir: Path, micro_params) -> None:
    """What probe.run reaches only after its first read: the base-model control (the base model and
    its own SAEs on the stage's device) and the generation counts (device taken from the model)."""
    from test_probe import LAYERS, write_fake_upstream

    from lfp.measure.triples import load_triples

    write_fake_upstream(in_tmp_project, tiny_model_dir, "hh")  # also writes the IMDB test prefixes
    triples = load_triples("hh", lexicon=False)
    with stage_context.open_stage("probe", micro_params, model="tiny", task="hh") as stage:
        assert stage.device == META
        stops_on_meta("measure/probe_codes.py:element_codes_sets", probe.source_rows, stage, micro_params, "tiny", "hh", "base", LAYERS,
                      triples, False)
    assert spy.moved["GPTNeoXForCausalLM"] == 1 and spy.moved["SparseAutoencoder"] == len(LAYERS)
    assert spy.ran["GPTNeoXModel"] >= 1 and spy.ran["SparseAutoencoder.encode"] >= 1

    lm, tok = tiny_on_meta(tiny_model_dir)
    stops_on_meta("tasks/lexicon_rl/generation.py:generated_word_counts", generation.generated_word_counts, lm, tok, micro_params, "vader")
    assert spy.ran["GPTNeoXForCausalLM.generate"] == 1


# --------------------------------------------------------------------------------------------
# explain, validate
# --------------------------------------------------------------------------------------------


def test_explain_stage_encodes_on_accelerates_device(spy: Spy, no_mlflow, in_tmp_project: Path, tiny_model_dir: Path, micro_params) -> None:
    from test_explain import LAYERS, build_fake_run

    build_fake_run(in_tmp_project, tiny_model_dir, "vader")
    stops_on_meta("validation/corpus.py:encode_corpus_with", explain.run, micro_params, "tiny", "vader")
    assert spy.accelerators == 1
    assert spy.moved["SparseAutoencoder"] == len(LAYERS) and spy.moved["GPTNeoXForCausalLM"] == 1
    assert spy.ran["GPTNeoXForCausalLM"] >= 1 and spy.ran["SparseAutoencoder.encode"] >= 1


@pytest.mark.parametrize(("task", "where", "models"), [
    ("vader", "tasks/lexicon_rl/ablation.py:sample_rewards", 1),  # samples from the fine-tuned model
    ("toxic", "validation/ablation.py:condition_scores", 2),  # scores the base model, moved to the fine-tuned model's device
])
def test_validate_stage_ablates_on_accelerates_device(task: str, where: str, models: int, spy: Spy, no_mlflow, in_tmp_project: Path,
                                                       tiny_model_dir: Path, micro_params) -> None:
    from test_explain import LAYERS, build_fake_run
    from test_validate import write_features, write_probe_inputs

    build_fake_run(in_tmp_project, tiny_model_dir, task)
    codes = np.maximum(np.random.default_rng(0).normal(size=(20, 64)), 0).astype(np.float32)
    write_probe_inputs(in_tmp_project, task, codes, np.full(20, 5.0), [32, 32])
    write_features(in_tmp_project, task, {LAYERS[0]: [0, 1]}, 4)
    stops_on_meta(where, validate.run, micro_params, "tiny", task)
    assert spy.accelerators == 1
    assert spy.moved["SparseAutoencoder"] == len(LAYERS) and spy.moved["GPTNeoXForCausalLM"] == models
    assert spy.ran["GPTNeoXForCausalLM.generate" if task == "vader" else "GPTNeoXForCausalLM"] >= 1


def test_ablation_kl_follows_the_models_device(spy: Spy, tiny_model_dir: Path) -> None:
    """validate's KL check (reached after the scores): inputs, hooks and SAEs on the model's device."""
    lm, tok = tiny_on_meta(tiny_model_dir)
    saes = meta_saes([0, 2], 32)
    seqs = [tok(t)["input_ids"] for t in SAMPLE_TEXTS[:3]]
    stops_on_meta("validation/ablation.py:condition_scores", ablation.mean_next_token_kl, lm, saes, {0: [1, 2], 2: []}, seqs, 2, tok.pad_token_id)
    assert spy.ran["SparseAutoencoder.encode"] == 2 and spy.ran["SparseAutoencoder.decode"] == 2  # the hooked pass ran


# --------------------------------------------------------------------------------------------
# finetune: the device is the trainer's (TRL's Accelerator); evaluation must follow it
# --------------------------------------------------------------------------------------------


class FakeTrainer:
    """What finetune reads from a TRL trainer, with the policy where Trainer puts it: on its
    accelerator's device (here meta)."""

    def __init__(self, model: Any, args: Any) -> None:
        self.args = args
        self.model = model.to(META)
        self.accelerator = SimpleNamespace(device=META, unwrap_model=lambda m: m, wait_for_everyone=lambda: None)
        self.state = SimpleNamespace(log_history=[], global_step=0)


@pytest.fixture()
def finetune_project(in_tmp_project: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> list[FakeTrainer]:
    shutil.copytree(tiny_model_dir, paths.base_model_dir("tiny"))
    review = " ".join(SAMPLE_TEXTS[:6])  # longer than micro's min_review_chars
    for split in ("train", "test"):
        io.write_jsonl(paths.PREPARED / "vader" / f"{split}.jsonl",
                       [{"id": f"imdb-{split}-{i}", "text": f"{review} {i}", "label": i % 2} for i in range(12)])
    for split, n in (("finetune", 12), ("heldout", 6)):
        io.write_jsonl(paths.PREPARED / "hh" / f"{split}.jsonl",
                       [{"id": f"hh-{split}-{i}", "prompt": f"\n\nHuman: Bread {i}?\n\nAssistant:", "chosen": " Mix flour and water.",
                         "rejected": " I hate bread.", "subset": "helpful-base"} for i in range(n)])
    trainers: list[FakeTrainer] = []

    def fake_train(model: Any, tokenizer: Any, data: Any, *rest: Any) -> FakeTrainer:
        trainers.append(FakeTrainer(model, rest[-1]))
        return trainers[-1]

    monkeypatch.setattr(dpo, "train", fake_train)
    monkeypatch.setattr(rl, "train", fake_train)
    for kind_finetune in (lexicon_finetune, preference_finetune):  # each kind imports it by name
        monkeypatch.setattr(kind_finetune, "save_finetuned", lambda *args: None)  # a meta model has nothing to save
    return trainers


@pytest.mark.parametrize(("task", "where", "ran"), [
    ("hh", "tasks/preference_dpo/dpo.py:response_log_probs", "GPTNeoXForCausalLM"),
    ("vader", "tasks/lexicon_rl/rl.py:sample", "GPTNeoXForCausalLM.generate"),
])
def test_finetune_evaluates_on_the_trainers_device(task: str, where: str, ran: str, spy: Spy, no_mlflow,
                                                   finetune_project: list[FakeTrainer], micro_params) -> None:
    stops_on_meta(where, finetune.run, micro_params, "tiny", task)
    (trainer,) = finetune_project
    assert not trainer.args.use_cpu  # TRL is left to use the device Accelerate picks
    assert spy.moved["GPTNeoXForCausalLM"] == 2  # the policy (by the trainer) and the base model (by the stage)
    assert spy.ran[ran] >= 1


def test_rl_kl_follows_the_given_device(spy: Spy, tiny_model_dir: Path, micro_params) -> None:
    """finetune's KL evidence (reached after sampling): CPU samples go to the device it is given."""
    lm, tok = tiny_on_meta(tiny_model_dir)
    ids = torch.tensor([tok("This movie was great and I loved it")["input_ids"]] * 2)
    new = ids.shape[1] - 3
    samples = rl.Samples(["a", "b"], ["x", "y"], ids, torch.ones_like(ids), torch.ones((2, new), dtype=torch.long), 3)
    stops_on_meta("tasks/lexicon_rl/rl.py:completion_log_probs", rl.mean_token_kl, lm, lm, samples, META, 2)
    assert spy.ran["GPTNeoXForCausalLM"] == 1


# --------------------------------------------------------------------------------------------
# static: no hard-coded devices
# --------------------------------------------------------------------------------------------

DEVICE_NAME = re.compile(r"^(cpu|cuda(:\d+)?|mps|xpu|npu|hpu|tpu|xla|meta)$")
FORBIDDEN_KEYWORDS = {"use_cpu", "no_cuda", "device_map"}  # trainer / from_pretrained settings that pin a device
# (file under src/lfp, enclosing function, what) -> why it is allowed
ALLOWED = {
    ("models/activation_cache.py", "cache_activations", "'cpu'"):
        "default of the `device` argument for direct calls (tests); every stage passes Accelerate's device",
    ("sae/rows.py", "as_float_tensor", "'cpu'"):
        "the SAE trainer is a hand-written CPU loop by design (module docstring); stages move trained SAEs to the device",
    ("sae/files.py", "<module>", "'cpu'"):
        "SAELENS_DEVICE: cfg.json's `device` field, a file-format value (load_sae always loads on CPU), not a device choice",
    ("tasks/finetuning.py", "bf16_supported", "torch.cuda"):
        "a precision probe (bf16 only where natively supported), not a device choice; TRL still places the model",
    ("tasks/finetuning.py", "on_cpu", "'cpu'"):
        "reads which device Accelerate chose (bf16 on a CPU is a measured choice, and transformers must be told), chooses none",
    ("tasks/finetuning.py", "_step_seconds", "'cpu'"):
        "CPU autocast of the timed bf16 step; called only where on_cpu() says Accelerate chose the CPU, places nothing",
}


def device_literals(path: Path) -> list[tuple[str, str, int]]:
    """(enclosing function, what, line) for each hard-coded device in a source file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[str, str, int]] = []

    def visit(node: ast.AST, func: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            func = node.name
        what = None
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and DEVICE_NAME.match(node.value):
            what = repr(node.value)
        elif isinstance(node, ast.Attribute) and node.attr == "cuda":
            what = "torch.cuda" if isinstance(node.value, ast.Name) and node.value.id == "torch" else ".cuda()"
        elif isinstance(node, ast.keyword) and node.arg in FORBIDDEN_KEYWORDS:
            what = f"{node.arg}="
        if what:
            found.append((func, what, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child, func)

    visit(tree, "<module>")
    return found


def test_device_literal_finder_sees_every_form(tmp_path: Path) -> None:
    src = tmp_path / "x.py"
    src.write_text('import torch\ndef f(m, x):\n    m.cuda()\n    y = x.to("cuda:0")\n    z = torch.device("cpu")\n'
                   '    torch.cuda.synchronize()\n    return g(use_cpu=True, device="mps")\n"""cpu or cuda in a docstring"""\n')
    assert sorted(w for _, w, _ in device_literals(src)) == sorted([".cuda()", "'cuda:0'", "'cpu'", "torch.cuda", "use_cpu=", "'mps'"])


def test_no_hard_coded_devices_in_stage_code() -> None:
    files = sorted(LFP_SRC.rglob("*.py"))  # every package: stages/, sae/, tasks/, ...
    assert len(files) > 10 and any(p.parent.name == "sae" for p in files)
    seen, bad = set(), []
    for path in files:
        rel = path.relative_to(LFP_SRC).as_posix()
        for func, what, line in device_literals(path):
            if (rel, func, what) in ALLOWED:
                seen.add((rel, func, what))
            else:
                bad.append(f"{rel}:{line} in {func}(): {what}")
    assert not bad, "hard-coded devices (let Accelerate choose, or add a justified exception to ALLOWED):\n" + "\n".join(bad)
    assert seen == set(ALLOWED), f"exceptions no longer needed, remove them from ALLOWED: {sorted(set(ALLOWED) - seen)}"
