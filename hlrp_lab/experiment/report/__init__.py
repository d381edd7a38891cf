"""The HTML report of a run (``RunLayout.report``): ``write_report``; no torch."""

from hlrp_lab.experiment.report.page import write_report

__all__ = ["write_report"]
