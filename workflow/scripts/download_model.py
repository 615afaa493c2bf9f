"""Snapshot a hub model into resources/models/<name> (HF_TOKEN read from the environment)."""

from vcdflow.shim import start

start(snakemake)  # noqa: F821

from vcdflow.data.fetch import fetch_model  # noqa: E402

hub = snakemake.params.hub  # noqa: F821
fetch_model(hub["hub_id"], snakemake.output[0], revision=hub["revision"], offline=snakemake.params.offline)  # noqa: F821
