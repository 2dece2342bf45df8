"""Whole-pipeline goals: the offline default `dvc repro` from a fresh copy (goal ≤ 15 min), the
start-up share of its CPU time (goal ≤ 0.15), a no-change `dvc repro` and `dvc status` (goal ≤ 2 s
each) and the peak memory of any stage (goal ≤ 4 GiB).

Prints each figure with its ratio to the goal, plus the wall time of every stage instance (from
the time DVC announces each stage), so a slow run shows where its minutes went.

Start-up: every stage process appends one JSON line of timings to the file named by $LFP_TIMINGS
(lfp.cli): its age when `main` began (interpreter start, `lfp.cli` import), the time and CPU
until `run` is called (imports, params, seeding), inside `run`, and the MLflow run opening and
closing inside it (mlflow import included; lfp.core.tracking.RUN_OVERHEAD). Start-up CPU = CPU before
`run` + MLflow open/close; stage work = the rest of `run`; the start-up share divides the sum of
start-up CPU by the CPU of the whole repro (all descendants, DVC included, from RUSAGE_CHILDREN).

Peak memory: `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` is the max RSS of the largest
descendant process, i.e. of the hungriest stage.

`--profile DIR` runs the first `dvc repro` under py-spy (sampling, all subprocesses; a few %
overhead) and writes DIR/pipeline.raw (collapsed stacks, for any flamegraph tool) and
DIR/profile.md: time per stage and, per stage, the lfp functions and the leaf functions where its
samples fall. `--keep` keeps the temp project (e.g. to copy its dvc.lock and reports back).
`--overlay DIR` copies DIR's files over the fresh copy (e.g. an older `src/lfp` to measure a
"before" on the same machine).

Run: `python benchmarks/pipeline.py [--params P] [--profile DIR] [--keep] [--overlay DIR] [--target STAGE]`
(`--smoke`: every code path in seconds, the micro profile's `prepare@vader` only, one no-change
repro and status, for tests/test_benchmarks.py; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
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
GOALS = {"repro_seconds": 15 * 60, "noop_seconds": 2.0, "status_seconds": 2.0, "peak_gib": 4.0, "startup_share": 0.15}
PROFILE_RATE = 20  # py-spy samples per second
STAGE_LINE = re.compile(r"^Running stage '([^']+)'")
LFP_CMD = re.compile(r"(?:^|[/ ])lfp (\w+)((?: --\w+ \S+)*)")
LFP_STAGE_FRAME = re.compile(r"\(lfp/stages/(\w+)\.py:")
LFP_FRAME = re.compile(r"\((?:.*/)?lfp/")


def fresh_copy(dst: Path, params: Path, overlay: Path | None = None) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    if overlay is not None:
        shutil.copytree(overlay, dst, dirs_exist_ok=True)
    shutil.copy2(params, dst / "params.yaml")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.email=b@b", "-c", "user.name=b", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=dst, check=True, capture_output=True)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> tuple[float, dict[str, float]]:
    """Run `cmd`, streaming its output; return (seconds, wall seconds per DVC stage instance)."""
    # the copy's own src/ (not the editable install's) is what its stages run, e.g. with --overlay
    pythonpath = os.pathsep.join(filter(None, [str(cwd / "src"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": pythonpath, **(extra_env or {})}
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


def instance_name(row: dict) -> str:
    """`stage@model-task[-source]`, as DVC and MLflow name the instance."""
    item = "-".join(str(row[k]) for k in ("model", "task", "source") if row.get(k))
    return row["stage"] + (f"@{item}" if item else "")


def startup_table(rows: list[dict], total_cpu: float, dvc_stages: dict[str, float] | None = None) -> tuple[list[str], dict[str, float]]:
    """Per stage process: DVC's wall for the stage, the process's wall until `main` returned vs
    inside `run`, and its CPU split into start-up (before `run` + MLflow open/close) and stage
    work; plus the totals."""
    dvc_stages = dvc_stages or {}
    lines = ["| stage | DVC s | process s | before run s | in run s | MLflow open+close s | start-up CPU s | work CPU s |",
             "|---|---|---|---|---|---|---|---|"]
    sums = dict.fromkeys(("process", "before_run", "run", "mlflow", "startup_cpu", "work_cpu", "process_cpu"), 0.0)
    for row in sorted(rows, key=lambda r: -(r.get("end_s", 0.0))):
        age = row.get("age_at_entry_s") or 0.0
        ready = row.get("ready_s", row.get("end_s", 0.0))  # no `ready`: failed before run
        process = age + row.get("end_s", 0.0)
        run = row.get("end_s", 0.0) - ready
        mlflow = row.get("mlflow_open_s", 0.0) + row.get("mlflow_close_s", 0.0)
        mlflow_cpu = row.get("mlflow_open_cpu_s", 0.0) + row.get("mlflow_close_cpu_s", 0.0)
        ready_cpu = row.get("ready_cpu_s", row.get("end_cpu_s", 0.0))
        end_cpu = row.get("end_cpu_s", 0.0)
        startup_cpu = ready_cpu + mlflow_cpu
        work_cpu = end_cpu - ready_cpu - mlflow_cpu
        for key, value in (("process", process), ("before_run", age + ready), ("run", run), ("mlflow", mlflow),
                           ("startup_cpu", startup_cpu), ("work_cpu", work_cpu), ("process_cpu", end_cpu)):
            sums[key] += value
        dvc = dvc_stages.get(instance_name(row))
        lines.append(f"| {instance_name(row)} | {'' if dvc is None else f'{dvc:.2f}'} | {process:.2f} | {age + ready:.2f} | "
                     f"{run:.2f} | {mlflow:.2f} | {startup_cpu:.2f} | {work_cpu:.2f} |")
    lines.append(f"| **all {len(rows)}** | {sum(dvc_stages.values()):.1f} | {sums['process']:.1f} | {sums['before_run']:.1f} | {sums['run']:.1f} | "
                 f"{sums['mlflow']:.1f} | {sums['startup_cpu']:.1f} | {sums['work_cpu']:.1f} |")
    sums["total_cpu"] = total_cpu
    sums["startup_share"] = sums["startup_cpu"] / total_cpu if total_cpu else float("nan")
    sums["outside_stages_cpu"] = total_cpu - sums["process_cpu"]  # DVC, git, interpreter teardown
    return lines, sums


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


def best_of(n: int, cmd: list[str], cwd: Path) -> list[float]:
    return [timed(cmd, cwd)[0] for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="profile to run (default: the offline default)")
    ap.add_argument("--keep", action="store_true", help="keep the temp project and print its path")
    ap.add_argument("--profile", type=Path, default=None, help="run the repro under py-spy; write DIR/pipeline.raw and DIR/profile.md")
    ap.add_argument("--overlay", type=Path, default=None, help="copy DIR's files over the fresh copy (e.g. an older src/lfp)")
    ap.add_argument("--target", default=None, help="`dvc repro TARGET` (a stage and its upstream) instead of the whole DAG")
    ap.add_argument("--smoke", action="store_true",
                    help="seconds: micro profile, --target prepare@vader, 1 no-change run each (tests; figures mean nothing)")
    args = ap.parse_args()
    repeats = 2
    if args.smoke:
        print("(smoke run: every code path on one cheap stage; the figures below mean nothing)", flush=True)
        args.params = ROOT / "tests" / "micro_params.yaml" if args.params == ROOT / "params.yaml" else args.params
        args.target = args.target or "prepare@vader"
        repeats = 1
    targets = [args.target] if args.target else []
    tmp = Path(tempfile.mkdtemp(prefix="lfp-bench-"))
    timings = Path(tempfile.mkstemp(prefix="lfp-bench-timings-", suffix=".jsonl")[1])  # outside the project: DVC never sees it
    try:
        fresh_copy(tmp, args.params, args.overlay)
        cmd = [str(BIN / "dvc"), "repro", *targets]
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            spy = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
            if spy is None:
                sys.exit("pipeline: --profile needs py-spy (pip install py-spy)")
            cmd = [spy, "record", "--subprocesses", "--rate", str(PROFILE_RATE), "--format", "raw",
                   "-o", str(args.profile.resolve() / "pipeline.raw"), "--", *cmd]
        cpu0 = children_cpu()
        repro, stages = timed(cmd, tmp, {"LFP_TIMINGS": str(timings)})
        repro_cpu = children_cpu() - cpu0
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
        noops = best_of(repeats, [str(BIN / "dvc"), "repro", *targets], tmp)
        statuses = best_of(repeats, [str(BIN / "dvc"), "status", *targets], tmp)
        for name, seconds in sorted(stages.items(), key=lambda kv: -kv[1]):
            print(f"pipeline: stage {name} {seconds:.1f} s ({100 * seconds / repro:.1f} %)")
        rows = [json.loads(line) for line in timings.read_text().splitlines() if line.strip()]
        table, sums = startup_table(rows, repro_cpu, stages)
        print("\n".join(table))
        note = " (under py-spy)" if args.profile else ""
        noop, status = min(noops), min(statuses)
        print(f"pipeline: repro_seconds={repro:.1f}{note} goal={GOALS['repro_seconds']} ratio={repro / GOALS['repro_seconds']:.2f}")
        print(f"pipeline: repro_cpu_seconds={repro_cpu:.1f}{note}: stage work {sums['work_cpu']:.1f}, start-up "
              f"{sums['startup_cpu']:.1f} (of which MLflow run open/close "
              f"{sum(r.get('mlflow_open_cpu_s', 0.0) + r.get('mlflow_close_cpu_s', 0.0) for r in rows):.1f}), "
              f"outside the stage processes' main (DVC, git, teardown) {sums['outside_stages_cpu']:.1f}; "
              f"{len(rows)} stage processes")
        print(f"pipeline: startup_share={sums['startup_share']:.3f} goal={GOALS['startup_share']} "
              f"ratio={sums['startup_share'] / GOALS['startup_share']:.2f}")
        print(f"pipeline: noop_repro_seconds={noop:.2f} (runs: {', '.join(f'{t:.2f}' for t in noops)}) "
              f"goal={GOALS['noop_seconds']} ratio={noop / GOALS['noop_seconds']:.2f}")
        print(f"pipeline: status_seconds={status:.2f} (runs: {', '.join(f'{t:.2f}' for t in statuses)}) "
              f"goal={GOALS['status_seconds']} ratio={status / GOALS['status_seconds']:.2f}")
        print(f"pipeline: peak_stage_rss_gib={peak_gib:.2f} goal={GOALS['peak_gib']} ratio={peak_gib / GOALS['peak_gib']:.2f}")
        if args.profile:
            print(summarize_profile(args.profile / "pipeline.raw", args.profile / "profile.md"))
            print(f"pipeline: profile written to {args.profile / 'profile.md'}")
        if args.keep:
            shutil.copy2(timings, tmp.parent / f"{tmp.name}-timings.jsonl")
            print(f"pipeline: project kept at {tmp} (stage timings: {tmp.parent / f'{tmp.name}-timings.jsonl'})")
    finally:
        timings.unlink(missing_ok=True)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
