"""The report: sections, verdicts, dashboards, figures and run comparison."""
