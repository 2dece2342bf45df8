"""The environment fails: MLflow server unreachable, disk full during an output write.

tests/test_tracking.py::test_unreachable_server_fails_fast_naming_the_uri covers `stage_run`
in-process; here the real command is run with only the user's MLFLOW_TRACKING_URI set.
"""

from __future__ import annotations

import dataclasses
import errno
import pathlib
import time
from pathlib import Path

import pytest
import torch
from rel_helpers import MICRO, assert_user_error, run_lfp, snapshot_bytes, write_jsonl, write_raw
from rel_helpers import mlflow_uri, project  # noqa: F401 - fixtures

from lfp.core import io

DEAD_URI = "http://127.0.0.1:9"  # the discard port: nothing listens there


def test_unreachable_mlflow_server_fails_fast_naming_the_uri(project):
    """No retries forever, no partial outputs: the run cannot be recorded, so nothing is written
    and the previous outputs stay as they were."""
    root, _ = project
    write_raw(root)
    old = [{"id": "hh-old", "prompt": "p", "chosen": " a", "rejected": " b", "subset": "helpful-base"}]
    write_jsonl(root / "data/prepared/hh/heldout.jsonl", old)
    before = snapshot_bytes(root)
    start = time.monotonic()
    proc = run_lfp(["prepare", "--task", "hh"], root, {"MLFLOW_TRACKING_URI": DEAD_URI}, timeout=90)
    elapsed = time.monotonic() - start
    assert_user_error(proc, "prepare", f"MLflow at {DEAD_URI}", "cannot start a run")
    assert elapsed < 60, f"took {elapsed:.0f} s to give up"
    assert snapshot_bytes(root) == before


# --------------------------------------------------------------------------------------------
# disk full (ENOSPC) in the middle of a write
# --------------------------------------------------------------------------------------------


def enospc(path: object) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", str(path))


class FullDisk:
    """A text file handle that accepts `room` characters, then fails like a full disk."""

    def __init__(self, path: str, room: int) -> None:
        self._fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        self._path, self._room = path, room

    def write(self, text: str) -> int:
        if len(text) > self._room:
            self._fh.write(text[: self._room])
            self._fh.flush()
            raise enospc(self._path)
        self._room -= len(text)
        return self._fh.write(text)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_enospc_in_write_jsonl_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "rows.jsonl"
    io.write_jsonl(target, [{"a": 1}, {"a": 2}])
    before = target.read_bytes()
    monkeypatch.setattr(io, "open", lambda path, *a, **k: FullDisk(path, room=20), raising=False)
    with pytest.raises(OSError) as info:
        io.write_jsonl(target, ({"a": i, "pad": "x" * 10} for i in range(100)))
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == before and leftovers(tmp_path) == []


def test_enospc_in_write_json_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    io.write_json(target, {"kendall_tau": 0.5})
    before = target.read_bytes()
    real = pathlib.Path.write_text

    def half_then_full(self: Path, text: str, *a: object, **k: object) -> int:
        real(self, text[: len(text) // 2], *a, **k)
        raise enospc(self)

    monkeypatch.setattr(pathlib.Path, "write_text", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        io.write_json(target, {"kendall_tau": 0.9, "n": list(range(100))})
    assert target.read_bytes() == before and leftovers(tmp_path) == []


def test_enospc_in_save_tensors_keeps_the_previous_file(tmp_path, monkeypatch):
    import safetensors.torch

    target = tmp_path / "w.safetensors"
    io.save_tensors(target, {"w": torch.ones(4, 4)})
    real = safetensors.torch.save_file

    def truncated_then_full(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        real(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise enospc(filename)

    monkeypatch.setattr(safetensors.torch, "save_file", truncated_then_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_tensors(target, {"w": torch.zeros(64, 64)})
    assert torch.equal(io.load_tensors(target)["w"], torch.ones(4, 4)) and leftovers(tmp_path) == []


@pytest.fixture()
def prepared_project(tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch):
    """A project whose prepare stage has run once per task (in-process, small raw data)."""
    from lfp.core.params_load import load_params
    from lfp.stages import prepare

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    write_raw(tmp_path)
    params = load_params(MICRO)
    for task in params.tasks:
        prepare.run(params, task=task)
    return tmp_path, params


def fail_on_nth_jsonl(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """The n-th `io.write_jsonl` call writes a little and then hits a full disk."""
    real = io.write_jsonl
    calls = {"n": 0}

    def write(path: object, rows: object) -> int:
        calls["n"] += 1
        if calls["n"] == n:
            with io.atomic_path(path) as tmp:
                tmp.write_text('{"partial": ')
                raise enospc(tmp)
        return real(path, rows)

    monkeypatch.setattr(io, "write_jsonl", write)


def test_enospc_during_prepare_keeps_every_previous_output(prepared_project, monkeypatch):
    """`prepare --task hh` writes two files (finetune, heldout); the 2nd fails: the hh folder and
    its metrics file stay the old ones (not a mix of old and new), the other tasks' outputs are
    untouched, and no temp folder is left."""
    from lfp.stages import prepare

    root, params = prepared_project
    before = {**snapshot_bytes(root / "data/prepared"), **snapshot_bytes(root / "reports")}
    changed = dataclasses.replace(params, prepare=dataclasses.replace(params.prepare, max_pairs=10))
    fail_on_nth_jsonl(monkeypatch, 2)
    with pytest.raises(OSError, match="No space left"):
        prepare.run(changed, task="hh")
    assert {**snapshot_bytes(root / "data/prepared"), **snapshot_bytes(root / "reports")} == before
    assert leftovers(root / "data/prepared") == []


def test_enospc_via_cli_is_one_line_and_exit_2(prepared_project, monkeypatch, capsys):
    from lfp import cli

    monkeypatch.setattr("lfp.core.seeding.seed_everything", lambda seed: None)  # skips a slow torch import
    fail_on_nth_jsonl(monkeypatch, 1)
    rc = cli.main(["--params", str(MICRO), "prepare", "--task", "hh"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("lfp prepare: error: ") and "No space left on device" in err[-1]
