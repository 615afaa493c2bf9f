"""Fetch one of HALC's auxiliary models (workflow/rules/halc.smk) into its resources folder."""

import shutil
import tempfile
from pathlib import Path

from vcdflow.shim import start

start(snakemake)  # noqa: F821

from vcdflow.data.download import download, extract, hf_snapshot  # noqa: E402

spec = dict(snakemake.params.spec)  # noqa: F821
offline = bool(snakemake.params.offline)  # noqa: F821
dest = Path(snakemake.output[0])  # noqa: F821
name = dest.name
if "hf" in spec:
    if offline or spec.get("revision") is None:
        if not (dest / "config.json").exists():
            why = "offline mode" if offline else f"no pinned revision of {spec['hf']} is known here"
            raise FileNotFoundError(f"{why}: place a snapshot of {spec['hf']} (config.json, weights, processor "
                                    f"files) in {dest}, or pin a 40-hex revision in workflow/rules/halc.smk")
    else:
        hf_snapshot(spec["hf"], dest, revision=spec["revision"], repo_type="model")
else:
    wheel = Path("resources/downloads") / Path(spec["url"]).name
    download(spec["url"], wheel, sha256=spec["sha256"], offline=offline)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
    try:
        extract(wheel, tmp / "x", members=[spec["strip"].rstrip("/") + "/"])
        if dest.exists():
            shutil.rmtree(dest)
        (tmp / "x" / spec["strip"]).rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
print(f"halc auxiliary model {name}: {dest}")
