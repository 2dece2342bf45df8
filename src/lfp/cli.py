"""`lfp <stage> [--model M] [--task T]`: one subcommand per DVC stage.

User errors (LfpError) print one line and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass

from lfp.core.errors import LfpError

SOURCES = ("base", "finetuned")


@dataclass(frozen=True)
class StageSpec:
    """What a stage's command line needs; the CLI checks it, so a stage never asserts it."""

    needs_model: bool
    needs_task: bool
    help: str
    needs_source: bool = False


STAGES: dict[str, StageSpec] = {
    "prepare": StageSpec(False, True, "validate and normalize a task's raw data into data/prepared/<task>/"),
    "base": StageSpec(True, False, "build the offline tiny base model or snapshot a hub/local model"),
    "finetune": StageSpec(True, True, "fine-tune by the task's kind: GRPO on a lexicon reward (lexicon_rl) or DPO (preference_dpo), via TRL"),
    "divergence": StageSpec(True, True, "per-layer parameter divergence and the top-k layers"),
    "activations": StageSpec(True, True, "cache MLP outputs of the chosen layers of the base or fine-tuned model", True),
    "sae": StageSpec(True, True, "two sparse autoencoders per layer (n, 2n) on base or fine-tuned activations + matching + quality", True),
    "contrastive": StageSpec(False, True, "build (positive, neutral, negative) triples"),
    "probe": StageSpec(True, True, "activation deltas, probes, Kendall tau / sign / accuracy + controls (fine-tuned and base)"),
    "measure": StageSpec(True, True, "lexicon tasks: learned values (behavioural ground truth), word-held-out probes with ceilings, planted / shuffled / seed controls"),
    "diffing": StageSpec(True, True, "model diffing: a TopK crosscoder per chosen layer over base and fine-tuned activations, Latent Scaling nu"),
    "explain": StageSpec(True, True, "feature explanations and task-relatedness labels"),
    "validate": StageSpec(True, True, "feature frequency at high predicted delta; zero-ablation reward"),
    "report": StageSpec(False, False, "report.md/html with the paper's numbers beside ours"),
}

EPILOG = """task kinds (params `task_specs.<task>.kind`; one module each in lfp/tasks/):
  lexicon_rl      RL on a lexicon reward over review prefixes (the paper's VADER task): GRPO,
                  ridge probe on the signed activation delta, Kendall tau vs the lexicon
  preference_dpo  DPO on preference pairs (HH-RLHF, toxic, or a local JSONL): logistic probe,
                  DPO implicit-reward ablation
A new task of an existing kind is params only: its name in `tasks` and a `task_specs` entry.

not a stage:
  mlflow-sync     after `dvc repro`: an MLflow run for every stage instance DVC skipped, from its
                  committed metrics (tag restored=true); `--check`: does the tracking store answer"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lfp", description="Learned Feedback Patterns pipeline (one subcommand per DVC stage).",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=None, help="params file (default: $LFP_PARAMS or ./params.yaml)")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE")
    sub.required = True
    for name, spec in STAGES.items():
        p = sub.add_parser(name, help=spec.help, description=spec.help)
        if spec.needs_model:
            p.add_argument("--model", required=True, help="a name from params `models`")
        if spec.needs_task:
            p.add_argument("--task", required=True, help="a name from params `tasks` (e.g. vader, hh, toxic)")
        if spec.needs_source:
            p.add_argument("--source", required=True, choices=SOURCES, help="whose activations: the base model or its fine-tune")
    return parser


def _configure_threads() -> None:
    """Use every core of a small CPU machine, and keep tokenizers from forking thread pools."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    """Turn SIGTERM into an exception so atomic writes discard their temp files and the MLflow
    run is closed as FAILED (SIGKILL cannot be caught: temp files `.*.tmp` may then remain)."""
    raise SystemExit(128 + signum)


def _say(line: str) -> None:
    """One line on stderr; on a terminal it starts on a fresh line, not glued to a tqdm bar."""
    print(("\n" if sys.stderr.isatty() else "") + line, file=sys.stderr)


def _recovery() -> str:
    """Under `dvc repro` ($DVC_STAGE is set), DVC deleted the stage's tracked outputs before running
    it: say how to get the last committed ones back (a failed stage otherwise leaves them gone)."""
    stage = os.environ.get("DVC_STAGE")
    return f" (DVC removed this stage's outputs before it ran; `dvc checkout {stage}` restores the last committed ones)" if stage else ""


TIMINGS_ENV = "LFP_TIMINGS"  # a file: each stage process appends one JSON line of its start-up timings


def _process_age() -> float | None:
    """Seconds since this process started (Linux /proc; 10 ms resolution), else None."""
    try:
        with open("/proc/self/stat") as f:  # starttime: field 22, in clock ticks after boot
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class _Timings:
    """Where a stage process's time goes: before `run` (interpreter, imports, params, seeding),
    inside `run`, and the MLflow run opening/closing inside it (lfp.core.tracking.RUN_OVERHEAD)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.age = _process_age()
        self.marks = {"entry": (time.perf_counter(), time.process_time())}

    def mark(self, name: str) -> None:
        self.marks[name] = (time.perf_counter(), time.process_time())

    def write(self, args: argparse.Namespace) -> None:
        self.mark("end")
        entry = self.marks["entry"]
        row: dict[str, object] = {
            "stage": args.stage,
            **{k: getattr(args, k) for k in ("model", "task", "source") if getattr(args, k, None) is not None},
            "age_at_entry_s": self.age,
            **{f"{k}_s": v[0] - entry[0] for k, v in self.marks.items() if k != "entry"},
            **{f"{k}_cpu_s": v[1] for k, v in self.marks.items()},  # CPU since the process started
        }
        tracking = sys.modules.get("lfp.core.tracking")  # imported by the stage only if it opened a run
        row.update(getattr(tracking, "RUN_OVERHEAD", {}))
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as exc:
            _say(f"lfp {args.stage}: cannot write timings to {self.path}: {exc}")


# Commands that are not DVC stages: `lfp mlflow-sync` (after `dvc repro`, a run for every stage DVC skipped)
TOOLS = {"mlflow-sync": "lfp.core.mlflow_sync"}


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words and words[0] in TOOLS:
        return int(importlib.import_module(TOOLS[words[0]]).main(words[1:]))
    timings = _Timings(os.environ[TIMINGS_ENV]) if os.environ.get(TIMINGS_ENV) else None
    args = build_parser().parse_args(argv)
    _configure_threads()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    previous_params = os.environ.get("LFP_PARAMS")
    if args.params:  # the pipeline id and the parent run's params read the same file
        os.environ["LFP_PARAMS"] = args.params
    try:
        from lfp.core.params_load import load_params
        from lfp.core.seeding import seed_everything

        params = load_params(args.params)
        model = getattr(args, "model", None)
        task = getattr(args, "task", None)
        if model is not None and model not in params.models:
            raise LfpError(f"--model '{model}' is not in params `models` ({', '.join(params.models)})")
        if task is not None and task not in params.tasks and not (args.stage == "prepare" and task in params.task_specs):
            raise LfpError(f"--task '{task}' is not in params `tasks` ({', '.join(params.tasks)})")
        seed_everything(params.seed)
        module = importlib.import_module(f"lfp.stages.{args.stage}")
        kwargs = {"source": args.source} if STAGES[args.stage].needs_source else {}
        if timings is not None:
            timings.mark("ready")
        module.run(params, model=model, task=task, **kwargs)
    except LfpError as exc:
        _say(f"lfp {args.stage}: error: {exc}{_recovery()}")
        return 2
    except OSError as exc:  # disk full, permissions: outputs stay intact thanks to atomic writes
        _say(f"lfp {args.stage}: error: {exc}{_recovery()}")
        return 2
    except KeyboardInterrupt:
        _say(f"lfp {args.stage}: interrupted")
        return 130
    finally:  # in-process callers (tests, notebooks) get their environment back
        if previous_params is None:
            os.environ.pop("LFP_PARAMS", None)
        else:
            os.environ["LFP_PARAMS"] = previous_params
        if timings is not None:
            timings.write(args)
        if argv is None:  # the `lfp` command: the process ends next
            # Interpreter shutdown would otherwise scan the ~300k objects of torch / MLflow / SQLAlchemy
            # in repeated garbage collections (~0.5-0.8 s per stage process); frozen, they are still
            # freed and finalized as module teardown drops them, and atexit handlers still run.
            gc.freeze()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
