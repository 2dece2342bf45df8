"""Atomic writes and validated JSONL reading: bad input never becomes a half-written output."""

import gzip
import json

import numpy as np
import pytest
import torch

from lfp import io
from lfp.errors import ArtifactError, DataError


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
