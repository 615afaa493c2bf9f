"""CHAIR's 80-line synonyms list (md5-checked)."""

from vcdflow.shim import start

start(snakemake)  # noqa: F821

from vcdflow.data.fetch import fetch_entry  # noqa: E402

fetch_entry("chair/synonyms", snakemake.output[0], offline=snakemake.params.offline)  # noqa: F821
