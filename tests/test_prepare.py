"""The per-task prepare stage: validation with file:line errors and no partial output, stable splits, the toxic proxy."""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
from pathlib import Path

import pytest

from lfp import cli
from lfp.core import corpora, io, paths
from lfp.core.sections import TaskSpec
from lfp.core.data import prepared_file, split_heldout
from lfp.core.errors import ConfigError, DataError, LfpError
from lfp.stages import prepare

ROOT = Path(__file__).resolve().parents[1]


def dialogue(*turns: str) -> str:
    """HH format: alternating Human / Assistant turns, each preceded by a blank line."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


def write_gz(path: Path, lines: list[str] | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = lines if isinstance(lines, bytes) else "".join(line + "\n" for line in lines).encode()
    with gzip.open(path, "wb") as fh:
        fh.write(data)


def hh_lines(subset: str, n: int) -> list[str]:
    """n good pairs, then one with different prompts and one with an empty reply (both dropped)."""
    rows = [
        {"chosen": dialogue(f"{subset} question {i}?", "Hi.", "More?", f"Helpful answer {i}."),
         "rejected": dialogue(f"{subset} question {i}?", "Hi.", "More?", f"Rude answer {i}.")}
        for i in range(n)
    ]
    rows.append({"chosen": dialogue("a?", "yes"), "rejected": dialogue("b?", "no")})
    rows.append({"chosen": dialogue("c?", "yes"), "rejected": dialogue("c?", "")})
    return [json.dumps(r) for r in rows]


def write_raw(root: Path, n_imdb: int = 12, n_pairs: int = 10) -> None:
    for split in ("train", "test"):
        reviews = [{"text": f"Review {i} of {split}.<br /><br />It was {'good' if i % 2 else 'bad'}.", "label": i % 2, "id": i}
                   for i in range(n_imdb)]
        write_gz(root / corpora.imdb_path(split), [json.dumps(r) for r in reviews])
    for subset in ("helpful-base", "harmless-base"):
        write_gz(root / corpora.hh_path(subset), hh_lines(subset, n_pairs))


def with_prepare(params, **changes):
    return dataclasses.replace(params, prepare=dataclasses.replace(params.prepare, **changes))


def with_task(params, task: str, **spec):
    """`params` with `task_specs.<task>` replaced (the old prepare.toxic_source etc. live there now)."""
    return dataclasses.replace(params, task_specs={**params.task_specs, task: TaskSpec(**spec)})


def prepare_all(params) -> None:
    """`lfp prepare --task T` for every task, as dvc.yaml's foreach does."""
    for task in params.tasks:
        prepare.run(params, task=task)


@pytest.fixture()
def raw_project(in_tmp_project: Path, shared_mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_mlflow_uri)
    write_raw(in_tmp_project)
    return in_tmp_project


def latest_run(experiment: str):
    import mlflow

    return mlflow.search_runs(experiment_names=[experiment], output_format="list", order_by=["start_time DESC"])[0]


def read(task: str, split: str) -> list[dict]:
    return io.read_jsonl(prepared_file(task, split))


def test_prepare_writes_contract_files(raw_project: Path, micro_params) -> None:
    params = with_prepare(micro_params, imdb_train_limit=0, imdb_test_limit=0, max_pairs=0)
    prepare.run(params, task="vader")
    train = read("vader", "train")
    assert len(train) == 12 and train[0] == {"id": "imdb-train-000000", "text": "Review 0 of train.\nIt was bad.", "label": 0}
    vader = io.read_json(prepare.metrics_file("vader"))
    assert vader["test"] == 12 and vader["imdb_test_raw"] == 12 and vader["dropped"] == {"empty_text": 0}
    assert not paths.PREPARED.joinpath("hh").exists()  # one task per stage instance

    prepare.run(params, task="hh")
    hh_ft, hh_ho = read("hh", "finetune"), read("hh", "heldout")
    assert len(hh_ft) + len(hh_ho) == 20 and len(hh_ho) == 10  # 2 x (10 good pairs), 2 dropped per subset
    row = hh_ho[0]
    assert set(row) == {"id", "prompt", "chosen", "rejected", "subset"}
    assert row["prompt"].endswith("\n\nAssistant:") and row["prompt"].count("\n\nHuman:") == 2
    assert row["chosen"].startswith(" Helpful answer") and row["rejected"].startswith(" Rude answer")
    metrics = io.read_json(prepare.metrics_file("hh"))
    assert prepare.metrics_file("hh") == paths.REPORTS / "runs" / "prepare" / "hh.json"
    assert metrics["finetune"] == len(hh_ft) and metrics["valid_pairs"] == 20
    assert metrics["dropped"]["prompt_mismatch"] == 2 and metrics["dropped"]["empty_response"] == 2
    run = latest_run(params.tracking.experiment)
    assert run.data.tags["task"] == "hh" and run.data.tags["data_source"] == "hh-rlhf"
    assert run.data.metrics["heldout"] == len(hh_ho)

    prepare.run(params, task="toxic")
    toxic = io.read_json(prepare.metrics_file("toxic"))
    assert toxic["dropped"]["prompt_mismatch"] == 1  # harmless-base only
    run = latest_run(params.tracking.experiment)
    assert run.data.tags["task"] == "toxic" and run.data.tags["proxy"] == "True"


def test_prepare_needs_a_task(raw_project: Path, micro_params) -> None:
    with pytest.raises(LfpError, match="--task"):
        prepare.run(micro_params)
    with pytest.raises(ConfigError, match="'nope' has no entry under task_specs"):
        prepare.run(micro_params, task="nope")
    assert not paths.PREPARED.exists()


def test_hh_split_is_disjoint_deterministic_and_stable(raw_project: Path, micro_params) -> None:
    params = with_prepare(micro_params, max_pairs=0)
    prepare.run(params, task="hh")
    first = {s: [r["id"] for r in read("hh", s)] for s in ("finetune", "heldout")}
    assert not set(first["finetune"]) & set(first["heldout"])
    assert {i.split("-")[1] for i in first["heldout"]} == {"helpful", "harmless"}
    prepare.run(params, task="hh")
    assert {s: [r["id"] for r in read("hh", s)] for s in ("finetune", "heldout")} == first
    # a pair's side depends only on (seed, id): adding rows never moves an existing pair
    rows = [{"id": f"p{i}"} for i in range(200)]
    ft_small, ho_small = split_heldout(rows[:100], 0.5, 0, "x")
    ft_big, ho_big = split_heldout(rows, 0.5, 0, "x")
    moved = {r["id"] for r in ho_small} - {r["id"] for r in ho_big}
    assert len(ho_big) == 100 and len(moved) < 25
    assert split_heldout(rows, 0.5, 1, "x")[1] != ho_big  # the seed matters


def test_heldout_fraction_is_per_task(raw_project: Path, micro_params) -> None:
    params = with_prepare(micro_params, max_pairs=0)
    spec = dataclasses.asdict(params.task("hh"))
    prepare.run(with_task(params, "hh", **{**spec, "heldout_fraction": 0.25}), task="hh")
    assert len(read("hh", "heldout")) == 5 and len(read("hh", "finetune")) == 15


def test_toxic_proxy_swaps_harmless_pairs(raw_project: Path, micro_params) -> None:
    params = with_prepare(micro_params, max_pairs=0)
    prepare.run(params, task="hh")
    prepare.run(params, task="toxic")
    hh = {r["id"].removeprefix("hh-"): r for r in read("hh", "finetune") + read("hh", "heldout")}
    toxic = read("toxic", "finetune") + read("toxic", "heldout")
    assert len(toxic) == 10
    for row in toxic:
        src = hh[row["id"].removeprefix("toxic-")]
        assert row["subset"] == "harmless-base" and row["proxy"] is True
        assert (row["chosen"], row["rejected"]) == (src["rejected"], src["chosen"])
        assert row["chosen"].startswith(" Rude answer")


def test_toxic_local_source(raw_project: Path, micro_params) -> None:
    local = raw_project / "toxic.jsonl"
    local.write_text("".join(json.dumps({"prompt": f"Insult {i}", "chosen": f"You fool {i}", "rejected": "No."}) + "\n" for i in range(6)))
    params = with_task(with_prepare(micro_params, max_pairs=0), "toxic", kind="preference_dpo", source=str(local),
                       rewards_harm=True, related_words="negative")
    prepare.run(params, task="toxic")
    rows = read("toxic", "heldout") + read("toxic", "finetune")
    assert len(rows) == 6 and all(r["proxy"] is False for r in rows)
    row = min(rows, key=lambda r: r["id"])
    assert row["id"] == "toxic-dpo-00000" and row["prompt"] == "\n\nHuman: Insult 0\n\nAssistant:"
    assert row["chosen"] == " You fool 0" and row["rejected"] == " No."
    assert io.read_json(prepare.metrics_file("toxic"))["valid_pairs"] == 6
    run = latest_run(params.tracking.experiment)
    assert run.data.tags["data_source"] == "local" and run.data.tags["proxy"] == "False"


def test_limits_are_seeded_subsamples(raw_project: Path, micro_params) -> None:
    params = with_prepare(micro_params, imdb_train_limit=6, imdb_test_limit=5, max_pairs=8)
    prepare.run(params, task="vader")
    prepare.run(params, task="hh")
    train = read("vader", "train")
    assert len(train) == 6 and len(read("vader", "test")) == 5
    assert [r["id"] for r in train] == sorted(r["id"] for r in train)  # original order kept
    assert len(read("hh", "finetune")) + len(read("hh", "heldout")) == 8
    prepare.run(params, task="vader")
    assert read("vader", "train") == train


BAD_CASES = {
    "bad_json": ("vader", lambda: corpora.imdb_path("test"), [json.dumps({"text": "ok", "label": 1}), "{not json"], r":2: invalid JSON"),
    "missing_field": ("hh", lambda: corpora.hh_path("helpful-base"), [json.dumps({"chosen": dialogue("q", "a")})], r":1: missing field 'rejected'"),
    "wrong_label": ("vader", lambda: corpora.imdb_path("train"), [json.dumps({"text": "ok", "label": 3})], r":1: field 'label' must be 0 or 1"),
    "empty_file": ("toxic", lambda: corpora.hh_path("harmless-base"), [], r": empty file"),
    "not_utf8": ("vader", lambda: corpora.imdb_path("train"), b'{"text": "caf\xe9", "label": 1}\n', r":1: not UTF-8"),
    "missing_file": ("hh", lambda: corpora.hh_path("harmless-base"), None, r": file not found"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_raw_input_raises_and_writes_nothing(raw_project: Path, micro_params, case: str) -> None:
    task, where, content, message = BAD_CASES[case]
    path = where()
    if content is None:
        path.unlink()
    else:
        write_gz(path, content)
    with pytest.raises(DataError, match=re.escape(str(path)) + message):
        prepare.run(micro_params, task=task)
    assert not paths.PREPARED.exists() and not prepare.metrics_file(task).exists()


def test_bad_input_keeps_previous_outputs_and_cli_exits_2(raw_project: Path, micro_params, capsys, monkeypatch) -> None:
    monkeypatch.setattr("lfp.core.seeding.seed_everything", lambda seed: None)  # skips a slow torch import
    prepare.run(micro_params, task="vader")
    before = read("vader", "test")
    write_gz(corpora.imdb_path("test"), [json.dumps({"text": "ok", "label": 0}), json.dumps({"label": 0})])
    assert cli.main(["--params", str(ROOT / "tests" / "micro_params.yaml"), "prepare", "--task", "vader"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{corpora.imdb_path('test')}:2: missing field 'text'" in err
    assert read("vader", "test") == before


def test_prepare_on_real_raw_data(raw_project: Path, micro_params) -> None:
    """The shipped data/raw through the micro limits (reads all 50k reviews: ~3 s)."""
    import shutil

    shutil.rmtree(raw_project / "data" / "raw")
    (raw_project / "data" / "raw").symlink_to(ROOT / "data" / "raw")
    prepare_all(micro_params)
    vader = io.read_json(prepare.metrics_file("vader"))
    hh = io.read_json(prepare.metrics_file("hh"))
    assert vader["train"] == micro_params.prepare.imdb_train_limit
    assert hh["finetune"] + hh["heldout"] == micro_params.prepare.max_pairs
    assert vader["imdb_test_raw"] == 25000 and hh["valid_pairs"] > 4000
    labels = {r["label"] for r in read("vader", "test")}
    assert labels == {0, 1}  # the raw files are sorted by label: a head-N limit would fail this
    assert not any("<br" in r["text"] for r in read("vader", "train"))
    assert {r["subset"] for r in read("hh", "heldout")} == {"helpful-base", "harmless-base"}
    assert {r["subset"] for r in read("toxic", "heldout")} == {"harmless-base"}
