"""`python -m lfp.report.compare_runs`: latest finished run per (stage, model, task, source), "—" for gaps,
atomic --out, one-line errors (exit 2) for an empty or missing store, credentials never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest

from lfp.report.compare_runs import fmt, main

T0 = 1_700_000_000_000  # ms


def _run(client, exp_id: str, stage: str, model: str, task: str, start: int, metrics: dict[str, float],
         *, source: str = "", status: str = "FINISHED") -> None:
    """One fake stage run tagged the way lfp.core.tracking.stage_run tags it."""
    tags = {"kind": "stage", "stage": stage, "model": model, "task": task, "source": source, "pipeline": "p"}
    run = client.create_run(exp_id, start_time=T0 + start, tags=tags, run_name=f"{stage}@{model}-{task}")
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)


@pytest.fixture()
def store(mlflow_store: str) -> str:
    """Two models x two tasks of `probe`, an older and a newer run of tiny/vader, one unfinished and
    one failed run that must not win, and one `sae` run with a source."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_store)
    exp = client.create_experiment("lfp")
    _run(client, exp, "probe", "tiny", "vader", 0, {"kendall_tau": 0.111})  # older
    _run(client, exp, "probe", "tiny", "vader", 10, {"kendall_tau": 0.337})  # newer: the one shown
    _run(client, exp, "probe", "tiny", "vader", 20, {"kendall_tau": 0.999}, status="RUNNING")
    _run(client, exp, "probe", "tiny", "vader", 30, {"kendall_tau": 0.888}, status="FAILED")
    _run(client, exp, "probe", "tiny", "hh", 1, {"probe_accuracy": 0.795})
    _run(client, exp, "probe", "smollm2", "vader", 2, {"kendall_tau": 0.25, "probe_accuracy": 0.5})
    _run(client, exp, "probe", "smollm2", "hh", 3, {"probe_accuracy": 0.81234})
    _run(client, exp, "sae", "tiny", "vader", 4, {"mean_x1_fvu": 0.0191, "mean_x1_l0": 14.4, "other": 1.0},
         source="base")
    return mlflow_store


def test_latest_finished_run_per_key(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--tracking-uri", store]) == 0
    out = capsys.readouterr().out
    assert "| model | task | source | kendall_tau | probe_accuracy |" in out  # defaults present in the store
    assert "| tiny | vader |  | 0.337 | — |" in out  # newest FINISHED run, not the older/running/failed
    assert "0.111" not in out and "0.999" not in out and "0.888" not in out
    assert "| smollm2 | hh |  | — | 0.812 |" in out
    assert "| tiny | vader | base | 0.019 | 14.400 |" in out  # sae: one column per expansion found
    assert "other" not in out and "bow_baseline_accuracy" not in out  # not a headline / not in the store
    rows = [line.split(" | ")[:2] for line in out.splitlines() if line.startswith("| ") and "model" not in line]
    assert rows[:4] == [["| smollm2", "hh"], ["| smollm2", "vader"], ["| tiny", "hh"], ["| tiny", "vader"]]
    assert out.index("## probe") < out.index("## sae")


def test_explicit_metrics_and_out_file(store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "reports" / "compare.md"
    assert main(["--stage", "probe", "--metrics", "probe_accuracy, nope", "--out", str(out_file)]) == 0  # URI from env
    printed = capsys.readouterr().out
    assert out_file.read_text(encoding="utf-8") == printed
    assert "| model | task | source | probe_accuracy | nope |" in printed
    assert "| tiny | vader |  | — | — |" in printed and "## sae" not in printed
    assert [p.name for p in out_file.parent.iterdir()] == ["compare.md"]  # no temp file left


def test_failed_write_keeps_previous_out(store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import os

    out_file = tmp_path / "compare.md"
    out_file.write_text("previous\n")

    def boom(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    assert main(["--out", str(out_file), "--force"]) == 2
    assert "disk full" in capsys.readouterr().err
    assert out_file.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compare.md", "mlflow.db"]


def test_empty_store_is_one_line_error(mlflow_store: str, capsys: pytest.CaptureFixture[str]) -> None:
    import mlflow

    mlflow.MlflowClient(tracking_uri=mlflow_store).create_experiment("lfp")
    capsys.readouterr()  # MLflow's own "Creating initial MLflow database tables" INFO lines
    assert main(["--tracking-uri", mlflow_store]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("lfp compare_runs: error: ")
    assert mlflow_store in captured.err and "no finished runs" in captured.err


def test_missing_store_is_not_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "none.db"
    assert main(["--tracking-uri", f"sqlite:///{db}"]) == 2
    assert "does not exist" in capsys.readouterr().err and not db.exists()


def test_credentials_never_echoed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--tracking-uri", "postgresql://bob:s3cretpw@127.0.0.1:1/db?token=abcdefgh12"]) == 2
    err = capsys.readouterr().err
    assert "s3cretpw" not in err and "abcdefgh12" not in err and "127.0.0.1:1/db" in err


def test_fmt() -> None:
    assert [fmt(None), fmt(0.33749), fmt(-0.0126), fmt(1151.0), fmt(7.58e-11), fmt(0.0)] == \
        ["—", "0.337", "-0.013", "1151.000", "7.58e-11", "0.000"]


def test_existing_out_is_refused_without_force(store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "compare.md"
    out_file.write_text("committed\n")
    assert main(["--out", str(out_file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists: pass --force" in err and out_file.read_text() == "committed\n"
    assert main(["--out", str(out_file), "--force"]) == 0
    assert "| tiny | vader |  | 0.337 | — |" in out_file.read_text()


def _write_runs(root: Path) -> Path:
    """A committed profile's per-run metrics: gemma3/vader probe + sae, and a planted control folder."""
    import json

    runs = root / "profiles" / "gemma3" / "runs"
    (runs / "gemma3-vader").mkdir(parents=True)
    (runs / "gemma3-vader" / "probe.json").write_text(json.dumps({"kendall_tau": 0.474, "nested": {"x": 1}, "label": "a"}))
    (runs / "gemma3-vader" / "sae-finetuned.json").write_text(json.dumps({"mean_x1_fvu": 0.278, "mean_x1_l0": 64.0}))
    (runs / "gemma3-vader-planted").mkdir()
    (runs / "gemma3-vader-planted" / "lfp.json").write_text(json.dumps({"control_of": "vader", "learned_value_tau": 0.9}))
    (runs / "base").mkdir()  # no model-task folder: ignored
    return runs


def test_runs_dir_fills_rows_the_store_lacks_and_says_so(store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = _write_runs(tmp_path)
    assert main(["--runs", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "| gemma3 | vader |  | 0.474 | — |" in out  # probe row from the file
    assert "| gemma3 | vader | finetuned | 0.278 | 64.000 |" in out  # sae row, source from the file name
    assert "| tiny | vader |  | 0.337 | — |" in out  # the store's rows stay
    assert "gemma3-vader-planted" not in out and "0.900" not in out  # a control is not a row of its own
    assert f"read from committed metrics files: {runs}/gemma3-vader." in out


def test_store_wins_over_files_for_the_same_key(store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    runs = tmp_path / "runs"
    (runs / "tiny-vader").mkdir(parents=True)
    (runs / "tiny-vader" / "probe.json").write_text(json.dumps({"kendall_tau": 0.4321}))
    assert main(["--stage", "probe", "--runs", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "| tiny | vader |  | 0.337 | — |" in out and "0.432" not in out and "committed metrics files" not in out


def test_runs_dir_without_a_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = _write_runs(tmp_path)
    db = tmp_path / "none.db"
    assert main(["--tracking-uri", f"sqlite:///{db}", "--runs", str(runs), "--stage", "probe"]) == 0
    assert "| gemma3 | vader |  | 0.474 |" in capsys.readouterr().out and not db.exists()
    assert main(["--tracking-uri", f"sqlite:///{db}", "--runs", str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_force_names_rows_the_new_table_drops(store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The committed compare.md had gemma3 rows; a store without them must not drop them silently."""
    runs = _write_runs(tmp_path)
    out_file = tmp_path / "compare.md"
    assert main(["--runs", str(runs), "--out", str(out_file)]) == 0
    capsys.readouterr()
    assert main(["--out", str(out_file), "--force"]) == 0
    err = capsys.readouterr().err
    assert "warning: 2 row(s) of the old" in err and "probe gemma3/vader" in err and "sae gemma3/vader/finetuned" in err
    assert "gemma3" not in out_file.read_text()
