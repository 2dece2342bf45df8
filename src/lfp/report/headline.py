"""reports/headline.json: the dozen numbers `dvc metrics show reports/headline.json` should print,
instead of the ~280 columns of every per-run metric."""

from __future__ import annotations

from lfp.core import paths
from lfp.report.format import num
from lfp.report.inputs import ReportInputs, label

HEADLINE = paths.REPORTS / "headline.json"
MEASURED = ("learned_value_tau", "learned_value_tau_seed_mean", "probe_tau_word_heldout_diff", "planted_auc", "shuffled_learned_value_tau")


def headline_metrics(inputs: ReportInputs) -> dict[str, float | None]:
    """Per task: the main probe metric with its CI, its base-model and shuffled-label controls, and
    the fine-tuning gain on the task's own objective. Flat keys `<task>.<name>` (`<model>-<task>.<name>`
    when params list several models); null where a stage did not produce the number."""
    out: dict[str, float | None] = {}
    runs = inputs.runs
    for (m, t), r in runs.items():
        p, kind = r["probe"], inputs.kind(t)
        key = kind.probe_metric
        values = {
            key: num(p, key),
            f"{key}_ci_low": num(p, f"{key}_ci_low"),
            f"{key}_ci_high": num(p, f"{key}_ci_high"),
            f"base_control_{key}": num(p, f"base_control_{key}"),
            f"shuffled_{key}": num(p, f"shuffled_{key}"),
        }
        values.update(kind.finetune_headline(r["finetune"]))
        if r.get("measure"):  # the validated measurement (stage `measure`)
            for k in MEASURED:
                values[k] = num(r["measure"], k)
        out.update({f"{label(runs, m, t)}.{k}": v for k, v in values.items()})
    return out
