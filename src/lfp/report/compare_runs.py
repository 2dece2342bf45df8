"""Compare stage metrics across profiles: one Markdown table per stage, one row per (model, task, source).

Why: the README says "compare probe@... across models"; the MLflow UI does it by ticking runs, and
this prints the same comparison flat (for a report or a diff) from one store holding the runs of
several profiles (tiny, smollm2, ...). Each row is the LATEST finished run of its key, so a re-run
supersedes an older one and an unfinished or failed run never shows. Metric names are the same
across models, so a column compares like with like; a metric a run lacks prints as "—".

A store holds only the runs logged into it: the committed profiles' numbers (e.g. gemma3's, run on
another machine) are files under reports/profiles/<profile>/runs/. `--runs DIR` adds rows read
from such per-run metrics files ({model}-{task}/{finetune,probe,lfp,sae-<source>,validate}.json,
the same values the stages log to MLflow) for every key the store lacks, and the output names them.
`--out FILE` refuses an existing FILE unless `--force`; with --force, rows of the old file that
the new one lacks are named on stderr (a store without them no longer drops them silently).

    python -m lfp.report.compare_runs [--stage probe ...] [--metrics a,b] [--tracking-uri URI]
                               [--experiment lfp] [--runs DIR ...] [--out FILE [--force]]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from lfp.core import io
from lfp.core.errors import ArtifactError, BackendError, LfpError
from lfp.core.secrets import redact, redact_url
from lfp.core.tracking_params import numeric_metrics
from lfp.core.tracking_store import sqlite_path, tracking_uri

STAGES = ("finetune", "probe", "measure", "sae", "validate")
MISSING = "—"
# Headline metrics per stage (full-match regexes; a column appears only if some run has it).
# Lexicon tasks (vader) and preference tasks (hh, toxic) log different headlines, so each list
# names both: the other task's rows show "—".
DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    # did fine-tuning learn? vader: mean reward gain; hh/toxic: DPO implicit-reward accuracy
    "finetune": ("reward_gain", "reward_gain_ci_low", "implicit_reward_accuracy", "beats_base"),
    # the paper's probe (vader: Kendall tau; hh/toxic: accuracy) and the no-model bag-of-words bar
    "probe": ("kendall_tau", "probe_accuracy", "bow_baseline_accuracy"),
    # the validated measurement (within sign: the primary statistic), its paired planted control and the plant's
    # own held-out reward gain, the shuffled null's mean over arms; hh/toxic: paired fine-tuned - base accuracy
    "measure": ("learned_value_tau", "learned_value_tau_within_sign", "planted_paired_auc", "planted_reward_gain",
                "learned_value_tau_null_mean", "pairwise_accuracy_diff"),
    # reconstruction and sparsity averaged over layers, one pair per expansion factor in the store
    "sae": (r"mean_x\d+_(?:fvu|l0)",),
    # Table 6 (ablation: related vs random features), Table 7 (permutation p), shared-feature MMCS
    "validate": ("t6_related_delta", "t6_random_delta", "t7_p", "mmcs_shared"),
}


def fmt(value: float | None) -> str:
    """Three decimals; a nonzero value that would print as 0.000 keeps 3 significant digits."""
    if value is None:
        return MISSING
    if math.isfinite(value) and value != 0 and abs(value) < 5e-4:
        return f"{value:.3g}"
    return f"{value:.3f}"


def _natural(key: str) -> list[Any]:
    """Sort key with numbers compared as numbers (`mean_x2_l0` before `mean_x16_l0`)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


def latest_runs(uri: str, experiment: str, stages: Sequence[str], *, allow_empty: bool = False) -> list[Any]:
    """The latest FINISHED stage run per (stage, model, task, source), in `stages` order.

    A sqlite file that does not exist is an error, not a new empty store (MLflow would create it);
    with allow_empty (other rows come from files) it and an empty store give no runs.
    """
    shown = redact_url(uri)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        if allow_empty:
            return []
        raise ArtifactError(f"MLflow store {shown}: {db} does not exist")
    for name in ("mlflow", "alembic"):  # as lfp.core.tracking: no INFO lines between table and error
        logging.getLogger(name).setLevel(logging.WARNING)
    import mlflow  # lazily: ~1-2 s to import

    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        runs: list[Any] = []
        for stage in stages if exp is not None else ():  # tag filters take no IN list
            query = f"tags.kind = 'stage' and tags.stage = '{stage}' and attributes.status = 'FINISHED'"
            token = None
            while True:
                page = client.search_runs([exp.experiment_id], query, max_results=1000, page_token=token,
                                          order_by=["attributes.start_time DESC"])
                runs.extend(page)
                if not (token := page.token):
                    break
    except Exception as exc:  # noqa: BLE001 - unreachable server, foreign schema, ...
        detail = redact(str(exc).splitlines()[0] if str(exc) else "")[:200]
        raise BackendError(f"MLflow store {shown}: cannot list runs ({type(exc).__name__}: {detail})") from None
    latest: dict[tuple[str, ...], Any] = {}
    for run in runs:  # newest first: the first run of a key wins
        t = run.data.tags
        latest.setdefault((t.get("stage", ""), t.get("model", ""), t.get("task", ""), t.get("source", "")), run)
    if not latest and not allow_empty:
        raise ArtifactError(f"MLflow store {shown}: no finished runs of stage {', '.join(stages)} "
                            f"in experiment '{experiment}' (run the pipeline first)")
    order = {s: i for i, s in enumerate(stages)}
    return [latest[k] for k in sorted(latest, key=lambda k: (order[k[0]], *k[1:]))]


# metrics file in reports/runs/{model}-{task}/ -> (stage, source)
RUN_FILES = {"finetune.json": ("finetune", ""), "probe.json": ("probe", ""), "lfp.json": ("measure", ""),
             "sae-base.json": ("sae", "base"), "sae-finetuned.json": ("sae", "finetuned"), "validate.json": ("validate", "")}


def key_of(run: Any) -> tuple[str, str, str, str]:
    t = run.data.tags
    return (t.get("stage", ""), t.get("model", ""), t.get("task", ""), t.get("source", ""))


def file_runs(runs_dir: Path, stages: Sequence[str]) -> list[Any]:
    """Rows from committed per-run metrics files: `{model}-{task}/<file>` (split at the last '-';
    a control's folder, whose lfp.json has `control_of`, is part of its task's measure row)."""
    if not runs_dir.is_dir():
        raise ArtifactError(f"--runs {runs_dir}: not a folder")
    out = []
    for folder in sorted(p for p in runs_dir.iterdir() if p.is_dir() and "-" in p.name):
        model, task = folder.name.rsplit("-", 1)
        for name, (stage, source) in RUN_FILES.items():
            path = folder / name
            if stage not in stages or not path.is_file():
                continue
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ArtifactError(f"{path}: not a metrics JSON ({exc})") from None
            if not isinstance(data, dict):
                raise ArtifactError(f"{path}: not a metrics JSON object")
            if "control_of" in data:
                continue
            tags = {"kind": "stage", "stage": stage, "model": model, "task": task, "source": source, "file": str(path)}
            out.append(SimpleNamespace(data=SimpleNamespace(tags=tags, metrics=numeric_metrics(data))))
    return out


def merged(store: Sequence[Any], files: Sequence[Any], stages: Sequence[str]) -> list[Any]:
    """The store's runs, plus file rows for keys the store lacks (first --runs folder wins), sorted."""
    rows = {key_of(r): r for r in store}
    for r in files:
        rows.setdefault(key_of(r), r)
    order = {s: i for i, s in enumerate(stages)}
    return [rows[k] for k in sorted(rows, key=lambda k: (order.get(k[0], len(order)), *k[1:]))]


def table_keys(text: str) -> set[tuple[str, str, str, str]]:
    """(stage, model, task, source) of every row of a compare_runs Markdown output."""
    keys, stage = set(), ""
    for line in text.splitlines():
        if line.startswith("## "):
            stage = line[3:].strip()
        elif line.startswith("| ") and not line.startswith("| model |"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 3:
                keys.add((stage, cells[0], cells[1], cells[2]))
    return keys


def columns(stage: str, runs: Iterable[Any], metrics: Sequence[str] | None) -> list[str]:
    """`metrics` as given, else the stage's default names (patterns) found in its runs."""
    if metrics:
        return list(metrics)
    present = {k for r in runs for k in r.data.metrics}
    out: list[str] = []
    for pattern in DEFAULT_METRICS.get(stage, ()):
        out += sorted((k for k in present if re.fullmatch(pattern, k) and k not in out), key=_natural)
    return out


def render(runs: Sequence[Any], stages: Sequence[str], metrics: Sequence[str] | None = None) -> str:
    """One Markdown section per stage with runs: `## stage`, then model | task | source | metrics."""
    parts: list[str] = []
    for stage in stages:
        rows = [r for r in runs if r.data.tags.get("stage") == stage]
        if not rows:
            continue
        cols = columns(stage, rows, metrics)
        lines = [f"## {stage}", "", "| " + " | ".join(["model", "task", "source", *cols]) + " |",
                 "|" + "---|" * 3 + "---:|" * len(cols)]
        for r in rows:
            t, m = r.data.tags, r.data.metrics
            cells = [t.get("model", ""), t.get("task", ""), t.get("source", ""), *(fmt(m.get(c)) for c in cols)]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    from_files = sorted({r.data.tags["file"].rsplit("/", 2)[0] + "/" + "-".join(key_of(r)[1:3]) for r in runs
                         if "file" in r.data.tags and r.data.tags.get("stage") in stages})
    if from_files:
        parts.append("Rows not in the MLflow store, read from committed metrics files: " + ", ".join(from_files) + ".")
    return "\n\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Print the tables (and write them atomically to --out); a user error is one line, exit 2."""
    ap = argparse.ArgumentParser(prog="python -m lfp.report.compare_runs", description=__doc__.splitlines()[0])
    ap.add_argument("--stage", action="append", dest="stages", metavar="STAGE",
                    help=f"repeatable (default: {', '.join(STAGES)})")
    ap.add_argument("--metrics", help="comma list of metric names (default: per-stage headlines)")
    ap.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///<root>/mlflow.db")
    ap.add_argument("--experiment", default="lfp")
    ap.add_argument("--runs", action="append", default=[], type=Path, metavar="DIR",
                    help="repeatable: also read per-run metrics files (e.g. reports/profiles/gemma3/runs) for keys the store lacks")
    ap.add_argument("--out", help="also write the Markdown here (atomically); refuses an existing file without --force")
    ap.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    args = ap.parse_args(argv)
    stages = list(dict.fromkeys(args.stages or STAGES))
    if bad := [s for s in stages if not re.fullmatch(r"[\w.-]+", s)]:
        ap.error(f"--stage {bad[0]!r}: not a stage name")
    metrics = [m.strip() for m in (args.metrics or "").split(",") if m.strip()] or None
    try:
        old = None
        if args.out and Path(args.out).exists():
            if not args.force:
                raise ArtifactError(f"{args.out} exists: pass --force to overwrite it, or --out a new file")
            old = Path(args.out).read_text(encoding="utf-8")
        files = [r for d in args.runs for r in file_runs(d, stages)]
        store = latest_runs(args.tracking_uri or tracking_uri(), args.experiment, stages, allow_empty=bool(args.runs))
        runs = merged(store, files, stages)
        if not runs:
            raise ArtifactError(f"no finished runs of stage {', '.join(stages)} in the store or in --runs {', '.join(map(str, args.runs))}")
        text = render(runs, stages, metrics)
        if old is not None and (lost := sorted(table_keys(old) - table_keys(text))):
            shown = ", ".join(f"{s} {m}/{t}" + (f"/{src}" if src else "") for s, m, t, src in lost[:12])
            more = f" and {len(lost) - 12} more" if len(lost) > 12 else ""
            print(f"lfp compare_runs: warning: {len(lost)} row(s) of the old {args.out} are not in the new one "
                  f"(not in this store; add --runs DIR for committed profiles): {shown}{more}", file=sys.stderr)
        if args.out:
            io.write_text(args.out, text)
    except (LfpError, OSError) as exc:
        print(f"lfp compare_runs: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
