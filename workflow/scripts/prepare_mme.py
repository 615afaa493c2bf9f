"""Write MME's parquet rows out as image files + items.jsonl (pairs kept consecutive)."""

from vcdflow.shim import start

start(snakemake)  # noqa: F821

from vcdflow.data.fetch import prepare_mme_folder  # noqa: E402

prepare_mme_folder(snakemake.input[0], snakemake.output[0])  # noqa: F821
