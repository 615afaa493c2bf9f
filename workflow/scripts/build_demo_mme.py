"""Demo MME: yes/no question pairs (existence, count, position, color) on the demo world's val split."""

from pathlib import Path

from vcdflow.shim import start

log = start(snakemake)  # noqa: F821

from vcdflow.data.demo_mme import build_demo_mme  # noqa: E402

p = snakemake.params  # noqa: F821
manifest = build_demo_mme(
    snakemake.input.instances,  # noqa: F821
    Path(snakemake.input.images) / "val",  # noqa: F821
    snakemake.output[0],  # noqa: F821
    n_images=p.n_images,
    seed=p.seed,
    suffix=p.suffix,
)
for sub, info in manifest["subtasks"].items():
    log.info(
        "demo MME %s: %d questions; outside the demo vocabulary: %s",
        sub,
        info["questions"],
        ", ".join(info["unknown_words"]) or "none",
    )
