"""One pinned AMBER data file (annotations, relation, safe words, queries)."""

from vcdflow.shim import start

start(snakemake)  # noqa: F821

from vcdflow.data.fetch import fetch_entry  # noqa: E402

name = snakemake.wildcards.name.split("/")[-1]  # noqa: F821
fetch_entry(f"amber/{name}", snakemake.output[0], offline=snakemake.params.offline)  # noqa: F821
