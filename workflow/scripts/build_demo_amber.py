"""Demo AMBER: generative and discriminative (existence, colour, position) data on the demo world's val split."""

from pathlib import Path

from vcdflow.shim import start

log = start(snakemake)  # noqa: F821

from vcdflow.data.demo_amber import build_demo_amber  # noqa: E402

p = snakemake.params  # noqa: F821
out_dir = Path(snakemake.output.annotations).parent.parent  # noqa: F821
manifest = build_demo_amber(
    snakemake.input.instances,  # noqa: F821
    Path(snakemake.input.images) / "val",  # noqa: F821
    out_dir,
    n_images=p.n_images,
    seed=p.seed,
)
log.info("demo AMBER %s; outside the demo vocabulary: %s", manifest["counts"], manifest["unknown_words"])
