"""A task kind is an object the stages call: a third, toy kind defined here (not in lfp/tasks/) runs
through the stages that take a task — prepare (via the CLI), contrastive, finetune, activations and
measure — without any stage knowing its name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from lfp import cli
from lfp.core import io, paths
from lfp.core.data import prepared_file
from lfp.core.params import KIND_SECTIONS, Params
from lfp.core.params_load import load_params
from lfp.core.sections import ContrastivePairs, DpoFinetune
from lfp.stages import activations, contrastive, finetune, measure
from lfp.tasks import KINDS, ContrastiveBackend, kind_of

from conftest import MICRO_PARAMS

N_TEXTS = 6


class ToyKind:
    """Texts in, the same texts as 'triples'; fine-tuning copies the base model."""

    name = "toy"
    splits = ("train", "heldout")
    default_related_words = "none"
    probe_form: Any = None

    def prepare(self, params: Params, task: str) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any], dict[str, Any]]:
        rows = io.read_jsonl(Path(params.task(task).source), {"id": str, "text": str})
        return {"train": rows[::2], "heldout": rows[1::2]}, {"n_rows": len(rows)}, {"data_source": "toy"}

    def activation_corpus(self, params: Params, task: str) -> tuple[list[str], list[str], Path]:
        source = prepared_file(task, "train")
        rows = io.read_jsonl(source, {"id": str, "text": str})
        return [r["id"] for r in rows], [r["text"] for r in rows], source

    def finetune(self, params: Params, model: str, task: str) -> None:
        shutil.copytree(paths.base_model_dir(model), paths.finetuned_dir(model, task))
        io.write_json(paths.report_dir(model, task) / "finetune.json", {"beats_base": True})

    def contrastive_backend(self, params: Params, task: str) -> ContrastiveBackend:
        return ContrastiveBackend("toy-echo", proxy_note="the held-out texts themselves")

    def contrastive_triples(self, params: Params, task: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        rows = io.read_jsonl(prepared_file(task, "heldout"), {"id": str, "text": str})
        triples = [{"id": r["id"], **{role: {"text": r["text"]} for role in ("positive", "neutral", "negative")}} for r in rows]
        return triples, {"n_triples": len(triples)}

    def measure(self, params: Params, model: str, task: str) -> None:
        io.write_json(paths.lfp_file(model, task), {"n_triples": len(io.read_jsonl(paths.contrastive_file(task)))})

    def ablation(self) -> Any:
        raise NotImplementedError


@pytest.fixture()
def toy(in_tmp_project: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Params]:
    """The micro profile plus a `toy` task of the toy kind, registered for this test only."""
    monkeypatch.setitem(KIND_SECTIONS, "toy", (DpoFinetune, ContrastivePairs))
    monkeypatch.setitem(KINDS, "toy", ToyKind())
    source = in_tmp_project / "toy.jsonl"
    source.write_text("".join(json.dumps({"id": f"toy-{i}", "text": f"A short toy text number {i}."}) + "\n"
                              for i in range(N_TEXTS)), encoding="utf-8")
    data = yaml.safe_load(MICRO_PARAMS.read_text(encoding="utf-8"))
    data["tasks"].append("toy")
    data["task_specs"]["toy"] = {"kind": "toy", "source": str(source)}
    data["explain"]["task_descriptions"]["toy"] = "a toy task"
    path = in_tmp_project / "params-toy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path, load_params(path)


def test_a_registered_kind_is_what_kind_of_returns(toy) -> None:
    _, params = toy
    assert isinstance(kind_of(params, "toy"), ToyKind)
    assert kind_of(params, "vader").name == "lexicon_rl" and kind_of(params, "hh").name == "preference_dpo"


def test_a_toy_kind_runs_through_the_stages(toy, tiny_model_dir: Path) -> None:
    params_file, params = toy
    assert cli.main(["--params", str(params_file), "prepare", "--task", "toy"]) == 0
    assert [r["id"] for r in io.read_jsonl(prepared_file("toy", "train"))] == ["toy-0", "toy-2", "toy-4"]
    assert io.read_json(paths.RUN_REPORTS / "prepare" / "toy.json")["n_rows"] == N_TEXTS

    contrastive.run(params, task="toy")
    assert [t["id"] for t in io.read_jsonl(paths.contrastive_file("toy"))] == ["toy-1", "toy-3", "toy-5"]

    shutil.copytree(tiny_model_dir, paths.base_model_dir("tiny"))
    finetune.run(params, "tiny", "toy")
    assert (paths.finetuned_dir("tiny", "toy") / "config.json").is_file()

    io.write_json(paths.divergence_file("tiny", "toy"), {"chosen_layers": [0, 2]})
    activations.run(params, "tiny", "toy", source="finetuned")
    index = io.read_json(paths.activations_dir("tiny", "toy", "finetuned") / "index.json")
    assert index["text_ids"] == ["toy-0", "toy-2", "toy-4"] and index["layers"] == [0, 2]

    measure.run(params, "tiny", "toy")
    assert io.read_json(paths.lfp_file("tiny", "toy")) == {"n_triples": 3}
