"""Benchmarks that cannot rot: every script in benchmarks/ imports, and runs its `--smoke` mode.

Why: `make bench` once exited 1 because activations_cache.py imported a function from a module
it had left; nothing ran the scripts between benchmark rounds. Each script has a `--smoke` flag
(tiny sizes, one repeat: every code path in seconds, figures meaningless). A new script must be
added to SMOKE below, or test_every_script_is_smoke_tested fails.

sae_peers.py needs sae-lens, which lives only in the bench venv (`make bench` builds .venv-bench):
its smoke run uses $LFP_BENCH_PYTHON, else that venv's python when it exists, else this one if it
has sae_lens, else skips;
its import check (no sae_lens needed at import time) always runs.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
BIN = Path(sys.executable).parent

# script -> what its --smoke output must contain (the figure line the full run prints)
SMOKE = {
    "run_all.py": ["sae_train: full_budget_seconds=", "activations_cache: overhead_ratio=", "activations_cache: memory_held_fraction=",
                   "precision: auto_probe_speedup=", "train_step_speedup="],
    "sae_train.py": None,  # run through run_all.py --smoke
    "activations_cache.py": None,  # run through run_all.py --smoke
    "pipeline.py": ["pipeline: repro_seconds=", "pipeline: noop_repro_seconds=", "pipeline: status_seconds="],
    "local_llm.py": ["server start + endpoint check:", "seconds per explanation + label:", "seconds per grade + rewrite:"],
    "sae_peers.py": ["worst fvu_ratio", "SAELens loads lfp's topk directories", "| 64x64 relu_l1 |"],
    "precision.py": None,  # run through run_all.py --smoke
    "grpo_step.py": ["grpo_step: fp32 step_seconds=", "grpo_step: bf16 step_seconds=", "sampling_share="],
}


def _scripts() -> list[str]:
    return sorted(p.name for p in BENCH.glob("*.py"))


def _smoke(script: str, python: str | Path = sys.executable, timeout: float = 300) -> str:
    pythonpath = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))  # this tree's lfp
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "TQDM_DISABLE": "1", "PYTHONPATH": pythonpath}
    proc = subprocess.run([str(python), str(BENCH / script), "--smoke"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{script} --smoke exited {proc.returncode}:\n{out[-4000:]}"
    assert "smoke run" in out, f"{script} --smoke did not say it is a smoke run:\n{out[-2000:]}"
    missing = [needle for needle in SMOKE[script] or [] if needle not in out]
    assert not missing, f"{script} --smoke printed none of {missing}:\n{out[-4000:]}"
    return out


def test_every_script_is_smoke_tested() -> None:
    scripts = _scripts()
    assert set(scripts) == set(SMOKE), f"benchmarks/ has {sorted(set(scripts) - set(SMOKE))} untested; SMOKE names {sorted(set(SMOKE) - set(scripts))} that are gone"
    without = [s for s in scripts if "--smoke" not in (BENCH / s).read_text(encoding="utf-8")]
    assert not without, f"no --smoke mode in {without}"


@pytest.mark.parametrize("script", _scripts())
def test_script_imports(script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Module-level imports resolve (what broke `make bench`); `main` is not run."""
    monkeypatch.syspath_prepend(str(BENCH))  # sae_peers imports sae_train as its neighbour
    spec = importlib.util.spec_from_file_location(f"bench_{script[:-3]}", BENCH / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(getattr(module, "main", None)), f"{script} has no main()"


def test_micro_benchmarks_smoke() -> None:
    """run_all.py --smoke runs sae_train.py, activations_cache.py and precision.py (what `make bench` runs first)."""
    out = _smoke("run_all.py")
    assert "== sae_train.py --smoke" in out and "== activations_cache.py --smoke" in out and "== precision.py --smoke" in out


def test_grpo_step_smoke() -> None:
    """grpo_step.py --smoke: a saved tiny model through lfp's GRPO set-up, one timed step per precision."""
    _smoke("grpo_step.py")


@pytest.mark.e2e
def test_pipeline_smoke() -> None:
    """A fresh copy, `dvc repro prepare@vader` on the micro profile, one no-change repro + status."""
    _smoke("pipeline.py")


def test_local_llm_smoke() -> None:
    pytest.importorskip("xllamacpp", reason="llama.cpp's server wheel (make install) is not installed")
    from lfp.core.errors import LfpError
    from lfp.llm.local_server import resolve_gguf

    try:
        resolve_gguf("smollm2")
    except LfpError as exc:
        pytest.skip(f"no SmolLM2 GGUF here: {exc}")
    _smoke("local_llm.py")


def _bench_python() -> Path | None:
    """A python that has sae_lens: $LFP_BENCH_PYTHON, the bench venv's, else this one's."""
    if os.environ.get("LFP_BENCH_PYTHON"):
        return Path(os.environ["LFP_BENCH_PYTHON"])
    venv = ROOT / ".venv-bench" / "bin" / "python"
    if venv.exists():
        return venv
    return Path(sys.executable) if importlib.util.find_spec("sae_lens") else None


def test_sae_peers_smoke() -> None:
    python = _bench_python()
    if python is None:
        pytest.skip("sae-lens is not installed (it lives in .venv-bench: `make bench` builds it)")
    _smoke("sae_peers.py", python)
