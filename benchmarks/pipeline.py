"""Whole-pipeline goals: the offline default `dvc repro` from a fresh copy (goal ≤ 15 min), a
no-change `dvc repro` (goal ≤ 5 s) and the peak memory of any stage (goal ≤ 4 GiB).

Peak memory: `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` is the max RSS of the largest
descendant process, i.e. of the hungriest stage. Run: `python benchmarks/pipeline.py [--params P]`.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GOALS = {"repro_seconds": 15 * 60, "noop_seconds": 5.0, "peak_gib": 4.0}


def fresh_copy(dst: Path, params: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    shutil.copy2(params, dst / "params.yaml")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.email=b@b", "-c", "user.name=b", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=dst, check=True, capture_output=True)


def timed(cmd: list[str], cwd: Path) -> float:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="profile to run (default: the offline default)")
    ap.add_argument("--keep", action="store_true", help="keep the temp project and print its path")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lfp-bench-"))
    try:
        fresh_copy(tmp, args.params)
        repro = timed([str(BIN / "dvc"), "repro"], tmp)
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
        noop = timed([str(BIN / "dvc"), "repro"], tmp)
        print(f"pipeline: repro_seconds={repro:.1f} goal={GOALS['repro_seconds']} ratio={repro / GOALS['repro_seconds']:.2f}")
        print(f"pipeline: noop_repro_seconds={noop:.2f} goal={GOALS['noop_seconds']} ratio={noop / GOALS['noop_seconds']:.2f}")
        print(f"pipeline: peak_stage_rss_gib={peak_gib:.2f} goal={GOALS['peak_gib']} ratio={peak_gib / GOALS['peak_gib']:.2f}")
        if args.keep:
            print(f"pipeline: project kept at {tmp}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
