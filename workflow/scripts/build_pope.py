"""POPE questions (random / popular / adversarial) from a COCO-format instances file."""

from pathlib import Path

from vcdflow.shim import start

log = start(snakemake)  # noqa: F821

from vcdflow.data.pope_builder import build_pope  # noqa: E402

p = snakemake.params  # noqa: F821
out_dir = Path(snakemake.output[0]).parent  # noqa: F821
summary = build_pope(
    snakemake.input.instances,
    out_dir,
    n_images=p.n_images,
    seed=p.seed,  # noqa: F821
    strategies=tuple(p.strategies),
    prefix=p.prefix,
    n_pos=p.n_pos,
    stats=p.stats,
)
log.info("POPE built: %s", {k: v for k, v in summary.items() if k != "images"})
