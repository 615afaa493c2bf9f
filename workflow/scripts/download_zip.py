"""Fetch a registry zip (resumable, verified) and extract its members atomically."""

from pathlib import Path

from vcdflow.shim import start

start(snakemake)  # noqa: F821

from vcdflow.data.fetch import fetch_zip_members  # noqa: E402

p = snakemake.params  # noqa: F821
outputs = list(snakemake.output)  # noqa: F821
dest = Path(outputs[0]) if len(outputs) == 1 else Path(outputs[0]).parent
fetch_zip_members(p.entry, dest, offline=p.offline, strip=p.strip)
