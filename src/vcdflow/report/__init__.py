"""The reproduction report: statistics, figures and one self-contained HTML page.

``build_report(metrics_csv, out_html, ...)`` renders ``reports/index.html`` from
``results/metrics.csv``, the per-item outcome and result files and
``resources/paper_results.csv``; it never runs a model. See :mod:`vcdflow.report.render`.
"""

from .render import build_report
from .stats import bootstrap_ci, mcnemar_exact, mean_std, paired_bootstrap_p

__all__ = ["build_report", "mean_std", "bootstrap_ci", "mcnemar_exact", "paired_bootstrap_p"]
