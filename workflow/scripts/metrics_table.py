"""Concatenate every per-run metrics part into results/metrics.csv (long format)."""

from vcdflow.shim import start

start(snakemake)  # noqa: F821

from vcdflow.scoring import combine_metrics  # noqa: E402

combine_metrics(list(snakemake.input), snakemake.output[0])  # noqa: F821
