"""Snapshot a hub model into resources/models/<name> (HF_TOKEN read from the environment)."""

from vcdflow.shim import start

start(snakemake)  # noqa: F821

from vcdflow.data.fetch import fetch_model  # noqa: E402
from vcdflow.data.hub_revisions import settings  # noqa: E402

hub = snakemake.params.hub  # noqa: F821
# a branch or tag is pinned through the revisions lock (read from the config at job time, never
# params: a changed update flag must not re-download existing folders)
fetch_model(
    hub["hub_id"],
    snakemake.output[0],
    revision=hub["revision"],
    offline=snakemake.params.offline,  # noqa: F821
    **settings(snakemake.config),
)  # noqa: F821
