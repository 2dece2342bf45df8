"""Interruption: a stage killed mid-write never leaves an output that looks complete.

Guarantee under test: after SIGKILL / SIGTERM / Ctrl-C the output is either absent or the previous
complete version; only dot-prefixed temp entries may remain beside it; a re-run succeeds.
(tests/test_io.py covers the same context managers when the block raises.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from rel_helpers import BIN, CHEAP_TARGETS, LFP, ROOT, clean_env, run_lfp, sh, snapshot_bytes, write_params
from rel_helpers import dvc_projects, mlflow_uri, project  # noqa: F401 - fixtures

WRITER = r'''
import signal, sys, time
from pathlib import Path
from lfp.core import io

# a test started from a background job inherits SIGINT ignored; a user's Ctrl-C is not
signal.signal(signal.SIGINT, signal.default_int_handler)

mode, target, version, slow = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "slow"

def rows():
    for i in range(400 if slow else 4):
        if i == 1:
            print("writing", flush=True)
        if slow:
            time.sleep(0.05)
        yield {"version": version, "i": i, "pad": "x" * 1000}

if mode == "dir":  # a folder output (models/base/M, data/activations/M-T, ...)
    with io.atomic_dir(target) as tmp:
        io.write_json(tmp / "config.json", {"version": version})
        io.write_jsonl(tmp / "rows.jsonl", rows())
else:  # a single-file output (data/contrastive/T.jsonl, metrics JSON)
    io.write_jsonl(target, rows())
'''


def run_writer(script: Path, mode: str, target: Path, version: str, slow: bool) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(script), mode, str(target), version, "slow" if slow else "fast"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())


def output_state(target: Path) -> object:
    """What a reader of `target` sees: the version of every file, or None if absent."""
    if not target.exists():
        return None
    files = sorted(target.iterdir()) if target.is_dir() else [target]
    lines = {f.name: f.read_text().splitlines() if f.suffix == ".jsonl" else [f.read_text()] for f in files}
    return {name: sorted({json.loads(line)["version"] for line in text}) for name, text in lines.items()}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
@pytest.mark.parametrize("mode", ["dir", "file"])
def test_killed_writer_leaves_the_old_output_and_only_dot_temps(tmp_path, mode, sig):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    out = tmp_path / "out"
    out.mkdir()
    target = out / ("model" if mode == "dir" else "triples.jsonl")
    assert run_writer(script, mode, target, "old", slow=False).wait(timeout=60) == 0
    old = output_state(target)

    proc = run_writer(script, mode, target, "new", slow=True)
    assert proc.stdout.readline().strip() == "writing"  # mid-write: one row out, ~400 to go
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert output_state(target) == old  # the complete old version, never a mix or a prefix
    strays = [p.name for p in out.iterdir() if p != target]
    assert all(name.startswith(".") for name in strays), strays
    if sig == signal.SIGINT:  # KeyboardInterrupt unwinds: the temp is removed too
        assert strays == []

    assert run_writer(script, mode, target, "new", slow=False).wait(timeout=60) == 0
    assert output_state(target) == ({"config.json": ["new"], "rows.jsonl": ["new"]} if mode == "dir" else {"triples.jsonl": ["new"]})


def test_sigkill_of_lfp_prepare_mid_write_keeps_old_outputs_then_reruns(project):
    """The real stage on the shipped raw data (`prepare --task vader`: all 50k reviews, so the write
    takes a while): killed as soon as its temp folder appears, then re-run to completion."""
    root, env = project
    (root / "data").mkdir()
    (root / "data/raw").symlink_to(ROOT / "data" / "raw")
    for split in ("train", "test"):
        (root / "data/prepared/vader").mkdir(parents=True, exist_ok=True)
        (root / f"data/prepared/vader/{split}.jsonl").write_text(json.dumps({"id": "old"}) + "\n")
    (root / "reports/runs/prepare").mkdir(parents=True)
    (root / "reports/runs/prepare/vader.json").write_text("{}\n")
    old = snapshot_bytes(root / "data/prepared") | snapshot_bytes(root / "reports")
    full = write_params(root / "full", lambda d: d["prepare"].update(imdb_train_limit=0, imdb_test_limit=0))

    proc = subprocess.Popen([str(LFP), "--params", str(full), "prepare", "--task", "vader"], cwd=root, env=clean_env(env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, caught = time.monotonic() + 120, False
    while proc.poll() is None and time.monotonic() < deadline:
        if any(p.name.endswith(".tmp") for p in (root / "data/prepared").iterdir()):
            os.killpg(proc.pid, signal.SIGKILL)
            caught = True
            break
        time.sleep(0.005)
    proc.wait(timeout=30)
    assert caught, "prepare finished before its write could be interrupted"
    assert snapshot_bytes(root / "data/prepared", hidden=False) | snapshot_bytes(root / "reports", hidden=False) == old
    assert all(p.name.startswith(".") for p in (root / "data/prepared").iterdir() if p.name != "vader")

    rerun = run_lfp(["prepare", "--task", "vader"], root, env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    counts = json.loads((root / "reports/runs/prepare/vader.json").read_text())
    for split in ("train", "test"):
        # split on "\n" only: reviews contain U+2028 / U+0085, which str.splitlines() also breaks on
        lines = (root / f"data/prepared/vader/{split}.jsonl").read_text(encoding="utf-8").rstrip("\n").split("\n")
        assert len(lines) == counts[split] > 0 and json.loads(lines[-1])["id"] != "old"


def test_dvc_repro_killed_mid_stage_is_seen_as_changed_and_reruns_to_the_same_outputs(dvc_projects):
    """`dvc repro -f prepare@vader` killed (SIGKILL to its whole process group) once DVC has removed
    the old outputs: `dvc status` reports the stage, and `dvc repro prepare@vader` restores outputs
    with the same hashes as before (dvc.lock unchanged)."""
    stage = "prepare@vader"
    proj = dvc_projects.a
    lock_before = (proj / "dvc.lock").read_text()
    proc = subprocess.Popen([str(BIN / "dvc"), "repro", "-f", stage], cwd=proj, env=clean_env(dvc_projects.env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and (proj / "data/prepared/vader").exists():
        time.sleep(0.02)
    time.sleep(1.0)  # inside `lfp prepare` now
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    status = json.loads(sh([str(BIN / "dvc"), "status", "--json", stage], proj, env=dvc_projects.env).stdout or "{}")
    assert stage in status, status  # outputs deleted / changed: DVC will not skip it
    sh([str(BIN / "dvc"), "repro", stage], proj, env=dvc_projects.env)
    lock_after = (proj / "dvc.lock").read_text()
    assert yaml.safe_load(lock_after)["stages"][stage] == yaml.safe_load(lock_before)["stages"][stage]
    ran = ["prepare@vader", "prepare@hh", *CHEAP_TARGETS]
    assert json.loads(sh([str(BIN / "dvc"), "status", "--json", *ran], proj, env=dvc_projects.env).stdout or "{}") == {}
