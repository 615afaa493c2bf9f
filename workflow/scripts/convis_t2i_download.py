"""Fetch the ConVis T2I weights (SDXL base + Hyper-SD 1-step UNet) into resources/t2i/."""

from vcdflow.shim import start

log = start(snakemake)  # noqa: F821

from vcdflow.data.hub_revisions import settings  # noqa: E402
from vcdflow.t2i.pipeline import download_t2i  # noqa: E402

# base_revision/unet_revision branches are pinned through the revisions lock (config, job time)
dest = download_t2i(
    dict(snakemake.params.t2i),
    snakemake.output[0],
    offline=bool(snakemake.params.offline),  # noqa: F821
    **settings(snakemake.config),
)  # noqa: F821
log.info("T2I weights in %s", dest)
