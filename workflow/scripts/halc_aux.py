"""Fetch one of HALC's auxiliary models (workflow/rules/halc.smk) into its resources folder."""

from vcdflow.shim import start

start(snakemake)  # noqa: F821

from vcdflow.data.fetch import fetch_halc_aux  # noqa: E402
from vcdflow.data.hub_revisions import settings  # noqa: E402

# the revisions lock and update flag are read from the config at job time (never params: a
# changed flag must not re-download existing folders)
dest = fetch_halc_aux(dict(snakemake.params.spec), snakemake.output[0], offline=bool(snakemake.params.offline),  # noqa: F821
                      **settings(snakemake.config))  # noqa: F821
print(f"halc auxiliary model {dest.name}: {dest}")
