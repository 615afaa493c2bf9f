"""Concatenate the shards of one result file in item order (and merge their sidecars).

A greedy method with no random draw is decoded once, under the grid's first seed; its result for
another seed is that decode with the records' ``seed`` set to it (see vcdflow.config.seed_free).
"""

from vcdflow.shim import start

start(snakemake)  # noqa: F821

from vcdflow.runner import merge_shards  # noqa: E402

merge_shards(list(snakemake.input), snakemake.output[0], seed=int(snakemake.params.seed))  # noqa: F821
