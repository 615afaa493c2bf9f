"""Fetch one pinned, md5-checked POPE question file."""

from vcdflow.shim import start

start(snakemake)  # noqa: F821

from vcdflow.data.fetch import fetch_pope  # noqa: E402

w = snakemake.wildcards  # noqa: F821
fetch_pope(w.dataset, w.version, w.split, snakemake.output[0], offline=snakemake.params.offline)  # noqa: F821
