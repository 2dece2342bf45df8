"""Atomic writes, validated JSONL reading and safetensors I/O.

Why: a stage killed mid-write must never leave a file that DVC would accept as complete, and bad
input must stop with `file:line: what is wrong` instead of a traceback deep inside a stage.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lfp.core.errors import ArtifactError, DataError

MAX_LINE_BYTES = 64 * 1024 * 1024  # a guard against a runaway (e.g. 1 GB) line

# Checks run just before an atomic write renames its temp into place (see `commit_check`).
_COMMIT_CHECKS: list[Callable[[], None]] = []


@functools.cache
def process_umask() -> int:
    """This process's umask, read once and cached.

    Linux shows it in /proc/self/status, a read that changes nothing. Elsewhere the only way to
    read it is to set it (os.umask(0), then restore it at once); doing that once per process keeps
    the instant in which another thread could create a file with umask 0 to one.
    """
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode `open()` would give a new file: 0o666 & ~umask (mkstemp always makes 0600)."""
    return 0o666 & ~process_umask()


def dir_mode() -> int:
    """The mode `mkdir` would give a new directory: 0o777 & ~umask (mkdtemp always makes 0700)."""
    return 0o777 & ~process_umask()


@contextlib.contextmanager
def commit_check(check: Callable[[], None]) -> Iterator[None]:
    """Within the block, every atomic write calls `check()` before it renames its temp into place.

    A check that raises discards the temp and keeps the previous output: the tracking code uses it
    to stop a stage from publishing outputs once its MLflow store is gone.
    """
    _COMMIT_CHECKS.append(check)
    try:
        yield
    finally:
        _COMMIT_CHECKS.remove(check)


def _before_commit() -> None:
    for check in list(_COMMIT_CHECKS):
        check()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it over `path` only if the block succeeds.

    The file gets the mode a plain `open(path, "w")` would give it (0o666 & ~umask).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _before_commit()
        os.chmod(tmp_path, file_mode())  # after the block: a writer may have replaced the temp file
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temp directory; swap it in for `path` only if the block succeeds.

    The directory gets the mode a plain `mkdir` would give it (0o777 & ~umask).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        tmp.chmod(dir_mode())
        yield tmp
        _before_commit()
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _finite(obj: Any) -> Any:
    """Replace NaN/inf with None so the JSON stays standard (DVC and browsers reject NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite(data), indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p}: file not found (run the stage that produces it first)")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{p}: not valid JSON ({exc})") from None


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> int:
    """Write rows as JSON lines atomically; returns the number of rows written."""
    n = 0
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(_finite(dict(row)), ensure_ascii=False, default=_json_default) + "\n")
                n += 1
    return n


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def iter_jsonl(
    path: str | os.PathLike[str],
    required: Mapping[str, type | tuple[type, ...]] | None = None,
    *,
    allow_empty: bool = False,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line_number, object) from a JSONL (optionally .gz) file, validating each line.

    `required` maps field name -> accepted type(s). Any problem raises DataError as `file:line: what`.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    seen = 0
    try:
        with _open_text(p) as fh:
            for lineno, raw in enumerate(iter(lambda: fh.readline(MAX_LINE_BYTES + 1), b""), start=1):
                if len(raw) > MAX_LINE_BYTES:
                    raise DataError(f"{p}:{lineno}: line longer than {MAX_LINE_BYTES} bytes")
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(f"{p}:{lineno}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
                if not text.strip():
                    raise DataError(f"{p}:{lineno}: empty line")
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{p}:{lineno}: invalid JSON ({exc.msg})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                for field, typ in (required or {}).items():
                    if field not in obj:
                        raise DataError(f"{p}:{lineno}: missing field '{field}'")
                    value = obj[field]
                    if isinstance(value, bool) and typ in (int, float):
                        ok = False
                    else:
                        ok = isinstance(value, typ)
                    if not ok:
                        want = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
                        raise DataError(
                            f"{p}:{lineno}: field '{field}' should be {want}, got {type(value).__name__}"
                        )
                seen += 1
                yield lineno, obj
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{p}: unreadable ({exc})") from None
    if seen == 0 and not allow_empty:
        raise DataError(f"{p}: empty file (no JSON lines)")


def read_jsonl(
    path: str | os.PathLike[str],
    required: Mapping[str, type | tuple[type, ...]] | None = None,
    *,
    allow_empty: bool = False,
) -> list[dict[str, Any]]:
    return [obj for _, obj in iter_jsonl(path, required, allow_empty=allow_empty)]


def save_tensors(path: str | os.PathLike[str], tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> None:
    """Save torch tensors with safetensors, atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=dict(metadata or {}))


def load_tensors(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a safetensors file; a truncated or corrupt file raises ArtifactError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p}: file not found (run the stage that produces it first)")
    try:
        return load_file(str(p))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{p}: corrupted or truncated safetensors file ({exc})") from None


def load_npy(path: str | os.PathLike[str], mmap: bool = True) -> np.ndarray:
    """Load a .npy array (memory-mapped by default) without pickle; corrupt files raise ArtifactError."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p}: file not found (run the stage that produces it first)")
    try:
        return np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ArtifactError(f"{p}: corrupted or truncated array file ({exc})") from None
