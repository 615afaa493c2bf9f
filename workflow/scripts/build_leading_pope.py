"""Build LQCD's leading-query variant of one POPE split (vcdflow.data.lqcd)."""

from vcdflow.shim import start

log = start(snakemake)  # noqa: F821

from vcdflow.data.lqcd import build_leading_pope  # noqa: E402

n = build_leading_pope(snakemake.input.base, snakemake.output[0], snakemake.params.direction)  # noqa: F821
log.info("%d leading questions -> %s", n, snakemake.output[0])  # noqa: F821
