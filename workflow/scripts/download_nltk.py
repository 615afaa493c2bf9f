"""Pinned NLTK data packages for CHAIR/AMBER (never fetched at scoring time)."""

from vcdflow.shim import start

start(snakemake)  # noqa: F821

from vcdflow.data.nltk_packages import install_nltk_data  # noqa: E402

install_nltk_data(snakemake.output[0], offline=snakemake.params.offline)  # noqa: F821
