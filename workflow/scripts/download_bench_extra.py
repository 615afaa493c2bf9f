"""Download (or, offline, check) one benchmark folder of vcdflow.benchmarks.sources."""

from pathlib import Path

from vcdflow.shim import start

start(snakemake)  # noqa: F821

from vcdflow.benchmarks.sources import fetch_benchmark  # noqa: E402

out = Path(snakemake.output[0])  # noqa: F821
dest = out if snakemake.params.kind in ("mmvp", "llavabench") else out.parent  # noqa: F821
fetch_benchmark(snakemake.params.kind, dest, offline=snakemake.params.offline)  # noqa: F821
