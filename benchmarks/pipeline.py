"""Whole-pipeline goals: the offline default `dvc repro` from a fresh copy (goal ≤ 15 min), a
no-change `dvc repro` (goal ≤ 5 s) and the peak memory of any stage (goal ≤ 4 GiB).

Prints each figure with its ratio to the goal, plus the wall time of every stage instance (from
the time DVC announces each stage), so a slow run shows where its minutes went.

Peak memory: `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` is the max RSS of the largest
descendant process, i.e. of the hungriest stage.

`--profile DIR` runs the first `dvc repro` under py-spy (sampling, all subprocesses; a few %
overhead) and writes DIR/pipeline.raw (collapsed stacks, for any flamegraph tool) and
DIR/profile.md: time per stage and, per stage, the lfp functions and the leaf functions where its
samples fall. `--keep` keeps the temp project (e.g. to copy its dvc.lock and reports back).

Run: `python benchmarks/pipeline.py [--params P] [--profile DIR] [--keep]`.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GOALS = {"repro_seconds": 15 * 60, "noop_seconds": 5.0, "peak_gib": 4.0}
PROFILE_RATE = 20  # py-spy samples per second
STAGE_LINE = re.compile(r"^Running stage '([^']+)'")
LFP_CMD = re.compile(r"(?:^|[/ ])lfp (\w+)((?: --\w+ \S+)*)")
LFP_STAGE_FRAME = re.compile(r"\(lfp/stages/(\w+)\.py:")
LFP_FRAME = re.compile(r"\((?:.*/)?lfp/")


def fresh_copy(dst: Path, params: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    shutil.copy2(params, dst / "params.yaml")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.email=b@b", "-c", "user.name=b", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=dst, check=True, capture_output=True)


def timed(cmd: list[str], cwd: Path) -> tuple[float, dict[str, float]]:
    """Run `cmd`, streaming its output; return (seconds, wall seconds per DVC stage instance)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    stages: dict[str, float] = {}
    current, since = None, t0
    tail: list[str] = []
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = (tail + [line])[-60:]
            match = STAGE_LINE.match(line)
            if match:
                now = time.perf_counter()
                if current:
                    stages[current] = now - since
                current, since = match.group(1), now
    end = time.perf_counter()
    if current:
        stages[current] = end - since
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{''.join(tail)}")
    return end - t0, stages


def stage_of(stack: str) -> str:
    """`stage@model-task` of the innermost `lfp <stage>` process in a py-spy stack.

    py-spy can label a freshly forked process with its parent's command line (it reads it before
    the exec); such a process is named by the stage module in its frames and its pid instead."""
    name, pid = "dvc", ""
    for frame in stack.split(";"):
        if frame.startswith("process "):
            pid = frame.split(":", 1)[0].removeprefix("process ")
            match = LFP_CMD.search(frame)
            if match:
                args = dict(re.findall(r"--(\w+) (\S+)", match.group(2)))
                item = "-".join(args[k].strip('"') for k in ("model", "task") if k in args)
                name, pid = match.group(1) + (f"@{item}" if item else ""), ""
    module = LFP_STAGE_FRAME.search(stack)
    if pid and module:
        return f"{module.group(1)} (pid {pid})"
    return name


def summarize_profile(raw: Path, out: Path, top: int = 6) -> str:
    """Write profile.md from py-spy's collapsed stacks; return its per-stage table."""
    per_stage: Counter[str] = Counter()
    lfp_frames: dict[str, Counter[str]] = defaultdict(Counter)
    leaves: dict[str, Counter[str]] = defaultdict(Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n, stage = int(count), stage_of(stack)
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        per_stage[stage] += n
        ours = [f for f in frames if LFP_FRAME.search(f)]
        lfp_frames[stage][ours[-1] if ours else "(outside lfp code)"] += n
        if frames:
            leaves[stage][frames[-1]] += n
    total = sum(per_stage.values()) or 1
    lines = [f"# py-spy profile of `dvc repro` ({PROFILE_RATE} samples/s, all processes)", "",
             "| stage | seconds sampled | share |", "|---|---|---|"]
    for stage, n in per_stage.most_common():
        lines.append(f"| {stage} | {n / PROFILE_RATE:.1f} | {100 * n / total:.1f} % |")
    table = "\n".join(lines)
    for stage, n in per_stage.most_common():
        lines += ["", f"## {stage} ({n / PROFILE_RATE:.1f} s)", "", "innermost lfp function:"]
        lines += [f"- {100 * c / n:.0f} % {f}" for f, c in lfp_frames[stage].most_common(top)]
        lines += ["", "leaf function:"]
        lines += [f"- {100 * c / n:.0f} % {f}" for f, c in leaves[stage].most_common(top)]
    out.write_text("\n".join(lines) + "\n")
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="profile to run (default: the offline default)")
    ap.add_argument("--keep", action="store_true", help="keep the temp project and print its path")
    ap.add_argument("--profile", type=Path, default=None, help="run the repro under py-spy; write DIR/pipeline.raw and DIR/profile.md")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lfp-bench-"))
    try:
        fresh_copy(tmp, args.params)
        cmd = [str(BIN / "dvc"), "repro"]
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            spy = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
            if spy is None:
                sys.exit("pipeline: --profile needs py-spy (pip install py-spy)")
            cmd = [spy, "record", "--subprocesses", "--rate", str(PROFILE_RATE), "--format", "raw",
                   "-o", str(args.profile.resolve() / "pipeline.raw"), "--", *cmd]
        repro, stages = timed(cmd, tmp)
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
        noop, _ = timed([str(BIN / "dvc"), "repro"], tmp)
        for name, seconds in sorted(stages.items(), key=lambda kv: -kv[1]):
            print(f"pipeline: stage {name} {seconds:.1f} s ({100 * seconds / repro:.1f} %)")
        note = " (under py-spy)" if args.profile else ""
        print(f"pipeline: repro_seconds={repro:.1f}{note} goal={GOALS['repro_seconds']} ratio={repro / GOALS['repro_seconds']:.2f}")
        print(f"pipeline: noop_repro_seconds={noop:.2f} goal={GOALS['noop_seconds']} ratio={noop / GOALS['noop_seconds']:.2f}")
        print(f"pipeline: peak_stage_rss_gib={peak_gib:.2f} goal={GOALS['peak_gib']} ratio={peak_gib / GOALS['peak_gib']:.2f}")
        if args.profile:
            print(summarize_profile(args.profile / "pipeline.raw", args.profile / "profile.md"))
            print(f"pipeline: profile written to {args.profile / 'profile.md'}")
        if args.keep:
            print(f"pipeline: project kept at {tmp}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
