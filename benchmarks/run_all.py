"""`make bench`: every benchmark in one go, each printing its figure and its ratio to the goal.

`--full` adds the whole-pipeline benchmark (a complete offline-default `dvc repro`, ~15 min).
`--smoke` passes --smoke to each script (every code path in seconds; tests/test_benchmarks.py).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="also time a whole offline-default dvc repro")
    ap.add_argument("--quick", action="store_true", help="pass --quick to the micro-benchmarks")
    ap.add_argument("--smoke", action="store_true", help="pass --smoke to every script run (seconds; figures mean nothing)")
    args = ap.parse_args()
    scripts = [["sae_train.py"], ["activations_cache.py"]]
    if args.quick:
        scripts = [s + ["--quick"] for s in scripts]
    scripts.append(["precision.py"])  # no --quick mode: ~35 s
    if args.full:
        scripts.append(["pipeline.py"])
    if args.smoke:
        scripts = [s + ["--smoke"] for s in scripts]
    rc = 0
    for script in scripts:
        print(f"== {' '.join(script)}", flush=True)
        rc |= subprocess.run([sys.executable, str(HERE / script[0]), *script[1:]], check=False).returncode
    return rc


if __name__ == "__main__":
    sys.exit(main())
