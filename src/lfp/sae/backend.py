"""Which GEMM path `GradientStep` (lfp.sae.step) runs: measured on the machine, not guessed from the CPU family.

Why: oneDNN runs the large SAEs' batch-32 GEMMs ~2x faster than MKL on an AMD EPYC but ~0.9x (and
once 0.5x) on an Intel CPU, so a size threshold tuned on one CPU picked the slow path on the other.

Rule (`choose_backend`):
  1. `LFP_SAE_GEMM=mkl|onednn` forces a path (where available); `auto` or unset = the rule below.
  2. Only one path implemented or available (topk; builds without oneDNN) -> that one.
  3. d_in·d_hidden ≤ ONEDNN_MIN_WEIGHTS (the default profile's 64x64 and 64x128 SAEs) -> MKL,
     without measuring: oneDNN's per-call overhead loses there on every CPU measured, and a fixed
     rule keeps these SAEs' weights exactly as before, run after run.
  4. Larger: both paths are timed on the actual shape (random data, the caller's thread count,
     interleaved blocks of steps, ~`MEASURE_SECONDS` in all), the faster kept, logged, and
     cached in-process and per machine in `gemm_cache_file()` (~/.cache/lfp/sae_gemm.json,
     keyed by CPU model, core count, torch version), so that later runs on the machine pick the
     same path: the two paths agree only to float rounding, and a choice re-measured on every
     run could flip between near-equal paths and change the trained weights from run to run.
     Delete the file to re-measure; set LFP_SAE_GEMM to override.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import torch

import lfp.sae.gemm as gemm
from lfp.sae.gradients import HandGradients
from lfp.sae.model import SparseAutoencoder

log = logging.getLogger(__name__)

ENV = "LFP_SAE_GEMM"
CACHE_ENV = "LFP_CACHE_DIR"
CACHE_NAME = "sae_gemm.json"
CACHE_VERSION = 1
MEASURE_SECONDS = 0.4  # both paths together, per shape, once per machine
MEASURE_BATCH = 32

_lock = threading.Lock()
_memo: dict[str, dict[str, Any]] = {}


def gemm_cache_file() -> Path:
    """$LFP_CACHE_DIR/sae_gemm.json, else $XDG_CACHE_HOME/lfp/…, else ~/.cache/lfp/…."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / CACHE_NAME
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "lfp" / CACHE_NAME


def machine_key() -> str:
    """What makes two machines time the same GEMMs alike: CPU model, cores, torch build."""
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()}|{model}|cpus={os.cpu_count()}|torch={torch.__version__}"


def shape_key(sae: SparseAutoencoder, batch_size: int, threads: int) -> str:
    return f"{sae.architecture}|tied={sae.tied}|{sae.d_in}x{sae.d_hidden}|batch={batch_size}|threads={threads}"


def choose_backend(sae: SparseAutoencoder, batch_size: int = MEASURE_BATCH) -> str:
    """The GEMM path for training `sae` at `batch_size` on the calling thread's torch threads
    (the module docstring's rule). Thread-safe; measures at most once per shape per machine."""
    available = gemm.backends_for(sae)
    forced = os.environ.get(ENV, "auto").strip().lower()
    if forced in gemm.BACKENDS:
        if forced in available:
            return forced
        log.warning("sae: %s=%s is not available here for %s SAEs; using %s", ENV, forced, sae.architecture, available[0])
        return available[0]
    if forced not in ("", "auto"):
        log.warning("sae: ignoring %s=%r (expected mkl, onednn or auto)", ENV, forced)
    if len(available) == 1:
        return available[0]
    if sae.d_in * sae.d_hidden <= gemm.ONEDNN_MIN_WEIGHTS:
        return "mkl"
    threads = torch.get_num_threads()
    key = shape_key(sae, batch_size, threads)
    with _lock:
        if key in _memo:
            return _memo[key]["backend"]
        path = gemm_cache_file()
        cached = _read_cache(path).get(machine_key(), {}).get(key)
        if isinstance(cached, dict) and cached.get("backend") in available:
            _memo[key] = cached
            log.info("sae: GEMM backend %s for %s (cached in %s: %s)", cached["backend"], key, path, _fmt(cached))
            return cached["backend"]
        result = measure(sae, batch_size, available)
        _memo[key] = result
        _write_cache(path, key, result)
        log.info("sae: GEMM backend %s for %s (measured, cached in %s: %s)", result["backend"], key, path, _fmt(result))
        return result["backend"]


def _fmt(result: dict[str, Any]) -> str:
    return ", ".join(f"{b} {result[f'{b}_us']:.1f} µs/step" for b in gemm.BACKENDS if f"{b}_us" in result)


def measure(sae: SparseAutoencoder, batch_size: int, backends: tuple[str, ...] = gemm.BACKENDS,
            seconds: float = MEASURE_SECONDS) -> dict[str, Any]:
    """Time one training step (gradients, no update) of each backend on `sae`'s shape: a warm-up,
    then interleaved blocks (so a busy neighbour slows both alike), each path scored by its median
    block. Returns {"backend": the faster, "<backend>_us": µs per step, ...}."""
    gen = torch.Generator().manual_seed(0)
    probe = SparseAutoencoder(sae.d_in, sae.d_hidden, tied=sae.tied, architecture=sae.architecture, k=sae.k)
    probe.reset_parameters(gen)
    x = torch.randn(batch_size, sae.d_in, generator=gen)
    steps = {b: HandGradients(probe, 0.0, backend=b) for b in backends}
    # warm-up, and a first timing to size the blocks
    per_step = {}
    for b, step in steps.items():
        for _ in range(3):
            step(x)
        t0 = time.perf_counter()
        for _ in range(5):
            step(x)
        per_step[b] = (time.perf_counter() - t0) / 5
    n_blocks = 7
    block = max(1, int(seconds / n_blocks / sum(per_step.values())))
    times: dict[str, list[float]] = {b: [] for b in steps}
    with torch.no_grad():
        for _ in range(n_blocks):
            for b, step in steps.items():
                t0 = time.perf_counter()
                for _ in range(block):
                    step(x)
                times[b].append((time.perf_counter() - t0) / block)
    result: dict[str, Any] = {f"{b}_us": sorted(t)[len(t) // 2] * 1e6 for b, t in times.items()}
    result["backend"] = min(steps, key=lambda b: result[f"{b}_us"])
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return result


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("machines"), dict):
        return {}
    return data["machines"]


def _write_cache(path: Path, key: str, result: dict[str, Any]) -> None:
    """Merge one result into the cache file (atomic rename); a read-only home only logs."""
    try:
        machines = _read_cache(path)
        machines.setdefault(machine_key(), {})[key] = result
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "machines": machines}, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("sae: could not cache the GEMM backend choice in %s (%s); it is kept for this process only", path, exc)


def clear_memo() -> None:
    """Forget the in-process choices (tests)."""
    with _lock:
        _memo.clear()
