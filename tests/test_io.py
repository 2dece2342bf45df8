"""Atomic writes and validated JSONL reading: bad input never becomes a half-written output."""

import gzip
import json

import numpy as np
import pytest
import torch

from lfp.core import io
from lfp.core.errors import ArtifactError, DataError


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    io.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"a": 1}


def test_atomic_dir_swaps_in_whole_directory(tmp_path):
    target = tmp_path / "d"
    with io.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(ValueError):
        with io.atomic_dir(target) as tmp:
            (tmp / "b.txt").write_text("2")
            raise ValueError
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_write_json_replaces_nan_with_null(tmp_path):
    io.write_json(tmp_path / "m.json", {"x": float("nan"), "y": np.float32(1.5)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": None, "y": 1.5}


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b'{"text": "a"}\n{"text": \n', ":2: invalid JSON"),
        (b'{"text": "a"}\n{"other": 1}\n', ":2: missing field 'text'"),
        (b'{"text": 3}\n', ":1: field 'text' should be str, got int"),
        (b'{"text": "a"}\n\n', ":2: empty line"),
        (b"", ": empty file"),
        (b'{"text": "\xff\xfe"}\n', ":1: not UTF-8"),
        (b"[1, 2]\n", ":1: expected a JSON object"),
    ],
)
def test_iter_jsonl_errors_name_file_and_line(tmp_path, content, needle):
    p = tmp_path / "x.jsonl"
    p.write_bytes(content)
    with pytest.raises(DataError) as exc:
        io.read_jsonl(p, {"text": str})
    assert str(p) + needle in str(exc.value)


def test_iter_jsonl_reads_gzip(tmp_path):
    p = tmp_path / "x.jsonl.gz"
    with gzip.open(p, "wt") as fh:
        fh.write('{"text": "a"}\n{"text": "b"}\n')
    assert [r["text"] for r in io.read_jsonl(p, {"text": str})] == ["a", "b"]


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        io.read_jsonl(tmp_path / "nope.jsonl")


def test_overlong_line_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "MAX_LINE_BYTES", 32)
    p = tmp_path / "x.jsonl"
    p.write_text('{"text": "' + "a" * 100 + '"}\n')
    with pytest.raises(DataError, match=":1: line longer than 32 bytes"):
        io.read_jsonl(p)


def test_safetensors_round_trip_and_truncation(tmp_path):
    p = tmp_path / "w.safetensors"
    t = {"w": torch.randn(4, 3)}
    io.save_tensors(p, t)
    assert torch.equal(io.load_tensors(p)["w"], t["w"])
    p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(ArtifactError, match="corrupted or truncated"):
        io.load_tensors(p)


def test_truncated_npy_is_detected(tmp_path):
    p = tmp_path / "a.npy"
    np.save(p, np.ones((100, 8), dtype=np.float32))
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="corrupted or truncated"):
        io.load_npy(p)


# Written by a fresh interpreter whose umask is set before it starts (the module reads it once).
_UMASK_WRITER = """
import os, torch
from lfp.core import io
io.write_text("new.txt", "x")
io.write_text("old.txt", "replaced")
io.write_json("m.json", {"a": 1})
io.write_jsonl("rows.jsonl", [{"a": 1}])
io.save_tensors("t.safetensors", {"w": torch.zeros(2)})
with io.atomic_dir("folder") as d:
    (d / "inside.txt").write_text("y")
    (d / "sub").mkdir()
open("plain.txt", "w").close()
os.mkdir("plaindir")
"""


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=["022", "077", "002"])
def test_atomic_outputs_get_the_modes_the_umask_gives(tmp_path, umask):
    """mkstemp/mkdtemp create 0600/0700 whatever the umask: outputs must instead look like any file
    the user writes (0o666 & ~umask, dirs 0o777 & ~umask), also when they replace an older file."""
    import os
    import subprocess
    import sys

    (tmp_path / "old.txt").write_text("before")
    (tmp_path / "old.txt").chmod(0o600)
    subprocess.run([sys.executable, "-c", _UMASK_WRITER], cwd=tmp_path, check=True, timeout=120,
                   preexec_fn=lambda: os.umask(umask))  # noqa: PLW1509 - sets the child's umask only
    mode = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")}
    want_file, want_dir = 0o666 & ~umask, 0o777 & ~umask
    assert mode["plain.txt"] == want_file and mode["plaindir"] == want_dir  # what the OS gives
    for name in ("new.txt", "old.txt", "m.json", "rows.jsonl", "t.safetensors", "inside.txt"):
        assert mode[name] == want_file, f"{name}: {oct(mode[name])} != {oct(want_file)}"
    for name in ("folder", "sub"):
        assert mode[name] == want_dir, f"{name}: {oct(mode[name])} != {oct(want_dir)}"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_reading_the_umask_leaves_it_unchanged():
    import os

    io.process_umask.cache_clear()
    before = os.umask(0o027)
    try:
        assert io.process_umask() == 0o027
        assert os.umask(0o027) == 0o027  # still set: reading it did not change it
    finally:
        os.umask(before)
        io.process_umask.cache_clear()


def test_a_failing_commit_check_keeps_the_old_output(tmp_path):
    """io.commit_check: a check that raises (the MLflow store vanished) discards the temp file."""
    target = tmp_path / "out.json"
    io.write_json(target, {"a": 1})

    def refuse() -> None:
        raise RuntimeError("store gone")

    with io.commit_check(refuse), pytest.raises(RuntimeError):
        io.write_json(target, {"a": 2})
    with io.commit_check(refuse), pytest.raises(RuntimeError):
        with io.atomic_dir(tmp_path / "d") as d:
            (d / "x").write_text("1")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    io.write_json(target, {"a": 3})  # outside the block the check is gone
    assert json.loads(target.read_text()) == {"a": 3}
