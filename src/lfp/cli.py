"""`lfp <stage> [--model M] [--task T]`: one subcommand per DVC stage.

User errors (LfpError) print one line and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from dataclasses import dataclass

from lfp.errors import LfpError

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
    "explain": StageSpec(True, True, "feature explanations and task-relatedness labels"),
    "validate": StageSpec(True, True, "feature frequency at high predicted delta; zero-ablation reward"),
    "report": StageSpec(False, False, "report.md/html with the paper's numbers beside ours"),
}

EPILOG = """task kinds (params `task_specs.<task>.kind`; one module each in lfp/tasks/):
  lexicon_rl      RL on a lexicon reward over review prefixes (the paper's VADER task): GRPO,
                  ridge probe on the signed activation delta, Kendall tau vs the lexicon
  preference_dpo  DPO on preference pairs (HH-RLHF, toxic, or a local JSONL): logistic probe,
                  DPO implicit-reward ablation
A new task of an existing kind is params only: its name in `tasks` and a `task_specs` entry."""


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_threads()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    previous_params = os.environ.get("LFP_PARAMS")
    if args.params:  # the pipeline id and the parent run's params read the same file
        os.environ["LFP_PARAMS"] = args.params
    try:
        from lfp.config import load_params, seed_everything

        params = load_params(args.params)
        model = getattr(args, "model", None)
        task = getattr(args, "task", None)
        if model is not None and model not in params.models:
            raise LfpError(f"--model '{model}' is not in params `models` ({', '.join(params.models)})")
        if task is not None and task not in params.tasks:
            raise LfpError(f"--task '{task}' is not in params `tasks` ({', '.join(params.tasks)})")
        seed_everything(params.seed)
        module = importlib.import_module(f"lfp.stages.{args.stage}")
        kwargs = {"source": args.source} if STAGES[args.stage].needs_source else {}
        module.run(params, model=model, task=task, **kwargs)
    except LfpError as exc:
        _say(f"lfp {args.stage}: error: {exc}")
        return 2
    except OSError as exc:  # disk full, permissions: outputs stay intact thanks to atomic writes
        _say(f"lfp {args.stage}: error: {exc}")
        return 2
    except KeyboardInterrupt:
        _say(f"lfp {args.stage}: interrupted")
        return 130
    finally:  # in-process callers (tests, notebooks) get their environment back
        if previous_params is None:
            os.environ.pop("LFP_PARAMS", None)
        else:
            os.environ["LFP_PARAMS"] = previous_params
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
