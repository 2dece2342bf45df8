"""Each task's report contribution, for the report stage.

Its own module, not lfp.tasks' `__init__`: every stage imports that, and lfp_dev counts a kind's
`report_sections` facet for each stage whose closure reads that name (lfp_dev.imports.GATED_MODULE).
"""

from __future__ import annotations

from typing import Any

from lfp.core.params import Params
from lfp.tasks import kind_of


def report_kinds(params: Params) -> dict[str, Any]:
    """task -> `kind.report_sections()`, for lfp.report.inputs.ReportInputs: the report package reads
    kinds through this map and never imports lfp.tasks."""
    return {task: kind_of(params, task).report_sections() for task in params.tasks}
