"""Concatenate the shards of one result file in item order."""

from vcdflow.shim import start

start(snakemake)  # noqa: F821

from vcdflow.runner import merge_shards  # noqa: E402

merge_shards(list(snakemake.input), snakemake.output[0])  # noqa: F821
