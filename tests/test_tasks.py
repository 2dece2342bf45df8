"""Tasks are data: a new task of an existing kind needs params only, and no code outside
lfp/tasks/ branches on a task's name.

The first half runs the real prepare stage (and the kind's activation corpus) on a task that exists
only in a params file: a local preference JSONL named by `task_specs.mypref.source`. The second half
is a static check over src/lfp: a comparison of a task variable with a string literal
(`task == "vader"`, `task in ("hh", "toxic")`) is the branch-on-name the design removed.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

import lfp
from lfp.core import io, paths
from lfp.core.params import TASK_KINDS
from lfp.core.params_load import load_params
from lfp.core.data import prepared_file
from lfp.core.errors import DataError
from lfp.stages import prepare
from lfp.tasks import kind_of, related_rule

from conftest import MICRO_PARAMS

LFP_SRC = Path(lfp.__file__).resolve().parent
N_PAIRS = 12


def pref_lines(n: int = N_PAIRS) -> list[dict[str, str]]:
    """A toxic-dpo-v0.2-style local preference set: `prompt`, `chosen`, `rejected` per line."""
    return [{"prompt": f"Tell me about topic {i}.", "chosen": f"Here is a careful answer about topic {i}.",
             "rejected": f"No. Topic {i} is dumb."} for i in range(n)]


def write_lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def params_with_task(tmp_path: Path, source: Path, name: str = "mypref"):
    """The micro profile plus one task, written as a params file and loaded like a user's."""
    data = yaml.safe_load(MICRO_PARAMS.read_text(encoding="utf-8"))
    data["tasks"].append(name)
    data["task_specs"][name] = {"kind": "preference_dpo", "source": str(source)}
    data["explain"]["task_descriptions"][name] = "training the model to prefer careful answers"
    path = tmp_path / "params-mypref.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return load_params(path)


@pytest.fixture()
def project(in_tmp_project: Path, shared_mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_mlflow_uri)
    return in_tmp_project


# --------------------------------------------------------------------------------------------
# a new task of an existing kind is params only
# --------------------------------------------------------------------------------------------


def test_adding_a_task_of_an_existing_kind_is_params_only(project: Path) -> None:
    source = write_lines(project / "mypref.jsonl", pref_lines())
    params = params_with_task(project, source)
    assert params.kind("mypref") == "preference_dpo" and "mypref" in params.tasks
    # the task-keyed sections exist with the kind's defaults, nothing else to configure
    assert params.finetune.mypref.algorithm == "dpo" and params.contrastive.mypref.backend == "substitution"
    assert related_rule(params, "mypref") == "none"  # the kind's default: no offline label invented

    prepare.run(params, task="mypref")
    finetune, heldout = prepared_file("mypref", "finetune"), prepared_file("mypref", "heldout")
    assert finetune == Path("data/prepared/mypref/finetune.jsonl") and finetune.is_file() and heldout.is_file()
    ft_rows, ho_rows = io.read_jsonl(finetune), io.read_jsonl(heldout)
    ft_ids, ho_ids = {r["id"] for r in ft_rows}, {r["id"] for r in ho_rows}
    assert ft_ids and ho_ids and not ft_ids & ho_ids and len(ft_ids | ho_ids) == N_PAIRS
    assert all(r["id"].startswith("mypref-") and r["prompt"].startswith("\n\nHuman: ") for r in ft_rows + ho_rows)
    metrics = io.read_json(prepare.metrics_file("mypref"))
    assert metrics["valid_pairs"] == N_PAIRS and metrics["finetune"] == len(ft_rows) and metrics["heldout"] == len(ho_rows)
    assert not paths.PREPARED.joinpath("vader").exists()  # only the new task was prepared

    # the kind's activation corpus reads the prepared fine-tuning pairs (prompt + each reply)
    ids, texts, corpus = kind_of(params, "mypref").activation_corpus(params, "mypref")
    assert corpus == finetune and len(ids) == len(texts) == 2 * len(ft_rows)
    by_id = {r["id"]: r for r in ft_rows}
    for text_id, text in zip(ids, texts):
        pair_id, reply = text_id.rsplit(":", 1)
        assert pair_id in by_id and pair_id not in ho_ids  # never a held-out pair
        assert text == by_id[pair_id]["prompt"] + by_id[pair_id][reply]


def test_a_bad_line_in_the_local_source_names_file_and_line_and_writes_nothing(project: Path) -> None:
    rows = pref_lines()
    del rows[4]["rejected"]
    source = write_lines(project / "mypref.jsonl", rows)
    params = params_with_task(project, source)
    with pytest.raises(DataError, match=re.escape(f"{source}:5: missing field 'rejected'")):
        prepare.run(params, task="mypref")
    assert not paths.PREPARED.exists() and not prepare.metrics_file("mypref").exists()


def test_every_kind_implements_the_task_kind_protocol(micro_params) -> None:
    kinds = {micro_params.kind(t): kind_of(micro_params, t) for t in micro_params.tasks}
    assert set(kinds) == set(TASK_KINDS)
    for name, kind in kinds.items():
        assert kind.name == name
        for method in ("prepare", "activation_corpus", "finetune", "contrastive_backend", "contrastive_triples", "measure", "ablation"):
            assert callable(getattr(kind, method)), (name, method)
        form = kind.probe_form
        assert set(form.tags) == {"probe", "rescale"} and form.predicted_note and form.predicted_kind
        assert len(kind.splits) == 2


# --------------------------------------------------------------------------------------------
# static: no branch on a task's name outside lfp/tasks/
# --------------------------------------------------------------------------------------------


def _is_task_ref(node: ast.AST) -> bool:
    """`task`, `t.task`, `cfg.review_task`: a variable that holds a task name."""
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
    return name is not None and (name == "task" or name.endswith("_task"))


def _str_literals(node: ast.AST) -> list[str]:
    """The string constants of `"vader"` or `("hh", "toxic")` / `["hh"]` / `{"hh"}`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [v for elt in node.elts for v in _str_literals(elt)]
    return []


def task_name_comparisons(source: str) -> list[tuple[int, str]]:
    """(line, code) of every comparison between a task variable and a string literal."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        if any(_is_task_ref(o) for o in operands) and any(_str_literals(o) for o in operands):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_task_name_check_sees_every_form() -> None:
    src = ('if task == "vader": pass\nif "hh" != task: pass\nok = task in ("hh", "toxic")\n'
           'x = cfg.review_task == "vader"\nfine = params.kind(task) == "lexicon_rl"\nalso = task == other\n')
    assert [line for line, _ in task_name_comparisons(src)] == [1, 2, 3, 4]


def test_no_code_outside_lfp_tasks_compares_a_task_name_to_a_literal() -> None:
    files = [p for p in sorted(LFP_SRC.rglob("*.py")) if (LFP_SRC / "tasks") not in p.parents]
    assert len(files) > 20 and any(p.parent.name == "stages" for p in files)
    bad = [f"{p.relative_to(LFP_SRC).as_posix()}:{line}: {code}"
           for p in files for line, code in task_name_comparisons(p.read_text(encoding="utf-8"))]
    assert not bad, "branch on a task's name (ask its kind: lfp.tasks.kind_of / params.kind / task_specs):\n" + "\n".join(bad)


@pytest.mark.parametrize(("broken", "needle"), [
    (lambda rows: rows.__setitem__(3, {"prompt": "Q?", "chosen": "A."}), "missing field 'rejected'"),
    (lambda rows: rows.__setitem__(4, {**rows[4], "chosen": "  "}), "field 'chosen' is empty"),
    (lambda rows: rows.__setitem__(5, dict(rows[1])), "duplicate of the pair on line 2"),
    (lambda rows: rows.__setitem__(6, {**rows[6], "rejected": rows[6]["chosen"]}), "are identical"),
])
def test_bad_local_preference_file_fails_with_file_line_and_writes_nothing(project: Path, broken, needle: str) -> None:
    rows = pref_lines()
    broken(rows)
    source = write_lines(project / "mypref.jsonl", rows)
    params = params_with_task(project, source)
    with pytest.raises(DataError, match=needle) as err:
        prepare.run(params, task="mypref")
    assert str(err.value).startswith(f"{source}:")
    assert not prepared_file("mypref", "finetune").exists() and not prepared_file("mypref", "heldout").exists()
