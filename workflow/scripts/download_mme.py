"""The lmms-lab/MME parquet shards, pinned by revision (hub client checks LFS sha256)."""

from vcdflow.shim import start

start(snakemake)  # noqa: F821

from vcdflow.data.fetch import fetch_mme_parquet  # noqa: E402

fetch_mme_parquet(snakemake.output[0], offline=snakemake.params.offline)  # noqa: F821
