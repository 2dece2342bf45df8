"""`lfp <stage> [--model M] [--task T]`: one subcommand per DVC stage.

User errors (LfpError) print one line and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from lfp.errors import LfpError

# stage name -> (needs --model, needs --task, help)
STAGES: dict[str, tuple[bool, bool, str]] = {
    "prepare": (False, False, "validate and normalize raw data into data/prepared/"),
    "base": (True, False, "build the offline tiny base model or snapshot a hub/local model"),
    "finetune": (True, True, "RL (GRPO on the VADER reward) or DPO fine-tuning via TRL"),
    "divergence": (True, True, "per-layer parameter divergence and the top-k layers"),
    "activations": (True, True, "cache MLP outputs of the chosen layers (memmap, no padding)"),
    "sae": (True, True, "two tied sparse autoencoders per layer (n, 2n) + matching + quality"),
    "contrastive": (False, True, "build (positive, neutral, negative) triples"),
    "probe": (True, True, "activation deltas, probes, Kendall tau / sign / accuracy + controls"),
    "explain": (True, True, "feature explanations and task-relatedness labels"),
    "validate": (True, True, "feature frequency at high predicted delta; zero-ablation reward"),
    "report": (False, False, "report.md/html with the paper's numbers beside ours"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lfp", description="Learned Feedback Patterns pipeline (one subcommand per DVC stage).")
    parser.add_argument("--params", default=None, help="params file (default: $LFP_PARAMS or ./params.yaml)")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE")
    sub.required = True
    for name, (needs_model, needs_task, help_text) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if needs_model:
            p.add_argument("--model", required=True, help="a name from params `models`")
        if needs_task:
            p.add_argument("--task", required=True, help="a name from params `tasks` (vader, hh, toxic)")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_threads()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
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
        module.run(params, model=model, task=task)
    except LfpError as exc:
        print(f"lfp {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permissions: outputs stay intact thanks to atomic writes
        print(f"lfp {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lfp {args.stage}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
