"""Bad parameters through the real `lfp` command: one line naming the key, exit 2, nothing written.

tests/test_config.py::test_bad_params_name_the_key checks the same messages in-process and
tests/test_cli.py the in-process `main()`; here the installed console script is run as a user
would, so the exit status and stderr are the ones a shell (and DVC) sees.
"""

from __future__ import annotations

import pytest
from rel_helpers import assert_user_error, files_under, run_lfp, write_jsonl, write_params
from rel_helpers import mlflow_uri, project  # noqa: F401 - fixtures

from lfp.core import paths

CASES = {
    "negative_size": (lambda d: d["activations"].update(n_texts=-5), ["prepare", "--task", "vader"],
                      "'activations.n_texts' must be >= 1, got -5"),
    "zero_learning_rate": (lambda d: d["sae"].update(learning_rate=0.0), ["prepare", "--task", "vader"],
                           "'sae.learning_rate' must be > 0"),
    "k_above_layers": (lambda d: d["divergence"].update(top_k=9), ["divergence", "--model", "tiny", "--task", "vader"],
                       "'divergence.top_k' (9) exceeds 'tiny_base.n_layers' (6)"),
    "unknown_task_in_params": (lambda d: d.update(tasks=["vader", "sarcasm"]), ["prepare", "--task", "vader"],
                               "'tasks' names 'sarcasm' but 'task_specs.sarcasm' is missing"),
    "unknown_task_kind": (lambda d: d["task_specs"]["hh"].update(kind="sarcasm_rl"), ["prepare", "--task", "hh"],
                          "'task_specs.hh.kind' must be one of ['lexicon_rl', 'preference_dpo']"),
    "unknown_task_on_cli": (None, ["probe", "--model", "tiny", "--task", "sarcasm"],
                            "--task 'sarcasm' is not in params `tasks`"),
    "unknown_model_on_cli": (None, ["base", "--model", "pythia-70m"],
                             "--model 'pythia-70m' is not in params `models`"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_parameter_via_cli_exits_2_with_one_line(tmp_path, case):
    mutate, args, needle = CASES[case]
    params = write_params(tmp_path, mutate)
    before = files_under(tmp_path)
    proc = run_lfp(args, tmp_path, timeout=60)
    line = assert_user_error(proc, args[0], needle)
    if mutate is not None:
        assert str(params.name) in line  # the file is named (relative, as the user gave it)
    assert files_under(tmp_path) == before  # not even an mlflow.db


def test_unknown_model_source_offline_fails_with_one_line_and_no_model_dir(project):
    """`source: not/a-real-id` with the hub unreachable: ModelLoadError naming the id; no
    models/base/<m>, no metrics file, no temp dir left behind."""
    root, env = project
    write_params(root, lambda d: d.update(models=["ghost"], model_specs={"ghost": {"source": "not/a-real-id"}}))
    write_jsonl(root / "data/prepared/vader/train.jsonl",
                [{"id": f"imdb-train-{i:06d}", "text": f"A fine film number {i}, with a good cast.", "label": i % 2}
                 for i in range(40)])
    proc = run_lfp(["base", "--model", "ghost"], root, {**env, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert_user_error(proc, "base", "not/a-real-id", "cannot load model")
    assert not (root / paths.base_model_dir("ghost")).exists()
    assert not (root / paths.base_metrics_file("ghost")).exists()
    assert not [p for p in root.glob("models/**/*") if p.is_file() or p.name.startswith(".")]
