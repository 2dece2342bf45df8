"""The CLI: lists stages, runs one, and turns user errors into one line + exit code 2."""

import subprocess
import sys

from lfp.cli import STAGES, main


def test_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "lfp.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for stage in STAGES:
        assert stage in out


def test_bad_params_exit_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: 0\nmodels: [tiny]\ntasks: [vader]\nmodel_specs: {tiny: {source: tiny}}\n"
                   "task_specs: {vader: {kind: lexicon_rl, source: imdb}}\nbogus: 1\n")
    assert main(["--params", str(bad), "prepare", "--task", "vader"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key 'bogus'" in err and str(bad) in err


def test_unknown_model_and_task_are_rejected(capsys):
    assert main(["divergence", "--model", "nope", "--task", "vader"]) == 2
    assert "--model 'nope'" in capsys.readouterr().err
    assert main(["divergence", "--model", "tiny", "--task", "sarcasm"]) == 2
    assert "--task 'sarcasm'" in capsys.readouterr().err
