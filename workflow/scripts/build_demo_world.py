"""Procedural COCO-format scenes of the demo world."""

from pathlib import Path

from vcdflow.shim import start

start(snakemake)  # noqa: F821

from vcdflow.data.demo_world import build_demo_world  # noqa: E402

p = snakemake.params  # noqa: F821
out_dir = Path(snakemake.output.images).parent  # noqa: F821
build_demo_world(out_dir, n_train=p.n_train, n_val=p.n_val, image_size=p.image_size, seed=p.seed)
