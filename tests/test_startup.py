"""Start-up cost of a stage process (issue 21): what `lfp <stage>` imports before it works, torch
seeded lazily with the same result, the MLflow run opened without needless work, and the CLI's
timings for benchmarks/pipeline.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "tests" / "micro_params.yaml"
MODEL_LIBS = ("torch", "transformers", "accelerate", "trl", "sklearn", "scipy", "matplotlib")


def _py(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()


def test_stages_without_a_model_import_no_model_library_before_they_work():
    """The CLI, params, seeding and the modules of prepare / contrastive / report load neither
    torch nor the libraries built on it, nor MLflow (imported when the run opens)."""
    code = (
        "import sys; from lfp import cli; from lfp.core.params_load import load_params; from lfp.core.seeding import seed_everything; "
        f"seed_everything(load_params({str(MICRO)!r}).seed); "
        "import lfp.stages.prepare, lfp.stages.contrastive, lfp.stages.report; "
        f"print(' '.join(m for m in {MODEL_LIBS + ('mlflow',)!r} if m in sys.modules))"
    )
    assert _py(code) == ""


SEEDED = ("import torch; print(torch.initial_seed(), torch.are_deterministic_algorithms_enabled(), "
          "torch.is_deterministic_algorithms_warn_only_enabled(), torch.rand(4).tolist(), torch.randn(2).tolist())")


def test_torch_seeded_at_its_import_equals_torch_seeded_up_front():
    eager = _py("import torch; from lfp.core.seeding import seed_everything; seed_everything(5); " + SEEDED)
    lazy = _py("import sys; from lfp.core.seeding import seed_everything; seed_everything(5); "
               "assert 'torch' not in sys.modules; " + SEEDED)
    assert lazy == eager and eager.startswith("5 True True")


def test_looking_torch_up_does_not_use_up_the_seeding():
    """transformers asks `importlib.util.find_spec('torch')` before importing it."""
    out = _py("import importlib.util, sys; from lfp.core.seeding import seed_everything; seed_everything(7); "
              "assert importlib.util.find_spec('torch') is not None and 'torch' not in sys.modules; "
              "import transformers.utils.import_utils; " + SEEDED +
              "; print(sum(type(f).__name__ == '_TorchSeeder' for f in sys.meta_path))")
    first, hooks = out.splitlines()
    assert first.startswith("7 True True") and hooks == "0"


def test_the_last_seed_before_the_import_wins_and_one_hook_is_installed():
    out = _py("import sys; from lfp.core.seeding import seed_everything; seed_everything(1); seed_everything(2); "
              "print(sum(type(f).__name__ == '_TorchSeeder' for f in sys.meta_path)); import torch; print(torch.initial_seed())")
    assert out.split() == ["1", "2"]


def test_stage_run_switches_mlflow_to_this_projects_store(tmp_path, monkeypatch):
    """The tracking URI is set through the environment (no tracer reset); a process whose MLflow
    points elsewhere (set_tracking_uri earlier) still logs to this project's store."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as mlflow_uri

    from lfp.core import tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    before = mlflow_uri._tracking_uri  # MLflow's process-wide choice, restored as it was (often None)
    try:
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'other.db'}")
        monkeypatch.delenv("MLFLOW_TRACKING_URI")  # which set_tracking_uri exported: MLflow's own global stays
        opened = dict(tracking.RUN_OVERHEAD)
        with tracking.stage_run("prepare", experiment="startup-test", task="hh") as run:
            run.log_metrics({"n": 1})
        uri = tracking.tracking_uri()
        assert uri == f"sqlite:///{tmp_path / 'mlflow.db'}" and mlflow.get_tracking_uri() == uri
        runs = mlflow.MlflowClient(uri).search_runs([mlflow.MlflowClient(uri).get_experiment_by_name("startup-test").experiment_id],
                                                    filter_string="tags.kind = 'stage'")
        assert [r.data.metrics for r in runs] == [{"n": 1.0}]
        assert tracking.RUN_OVERHEAD["mlflow_open_s"] > opened["mlflow_open_s"]
        assert tracking.RUN_OVERHEAD["mlflow_close_cpu_s"] >= opened["mlflow_close_cpu_s"]
    finally:
        mlflow_uri._tracking_uri = before


def test_cli_appends_its_timings_when_asked(tmp_path, monkeypatch, in_tmp_project):
    from lfp import cli
    from lfp.core import tracking
    from lfp.stages import prepare

    def fake_run(params, model=None, task=None):
        with tracking.stage_run("prepare", experiment=params.tracking.experiment, task=task):
            pass

    out = tmp_path / "timings.jsonl"
    monkeypatch.setenv(cli.TIMINGS_ENV, str(out))
    monkeypatch.setattr(prepare, "run", fake_run)
    assert cli.main(["--params", str(MICRO), "prepare", "--task", "hh"]) == 0
    assert cli.main(["--params", str(MICRO), "prepare", "--task", "nosuch"]) == 2  # fails before `run`
    ok, failed = (json.loads(line) for line in out.read_text().splitlines())
    assert ok["stage"] == "prepare" and ok["task"] == "hh"
    assert 0 <= ok["ready_s"] <= ok["end_s"] and ok["ready_cpu_s"] <= ok["end_cpu_s"]
    assert ok["mlflow_open_s"] > 0
    assert ok["age_at_entry_s"] is None or ok["age_at_entry_s"] >= 0  # None off Linux
    assert "ready_s" not in failed and failed["task"] == "nosuch"


@pytest.mark.parametrize("stage", ["prepare", "report"])
def test_help_of_a_stage_is_cheap(stage):
    """`lfp <stage> --help` parses arguments only: no params, no stage module, no model library."""
    code = (f"import sys; from lfp import cli\ntry:\n    cli.main([{stage!r}, '--help'])\nexcept SystemExit: pass\n"
            f"print('loaded:', *(m for m in {MODEL_LIBS + ('mlflow', 'numpy', 'lfp.stages.' + stage)!r} if m in sys.modules))")
    assert _py(code).splitlines()[-1] == "loaded:"
