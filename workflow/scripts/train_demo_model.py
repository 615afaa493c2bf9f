"""Train the demo LLaVA on the demo world's train split (seeded; cached by Snakemake)."""

from vcdflow.shim import start

log = start(snakemake)  # noqa: F821

from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from vcdflow.models.demo import train_demo_model  # noqa: E402

torch.set_num_threads(snakemake.threads)  # noqa: F821
t = dict(snakemake.params.train)  # noqa: F821
t.pop("threads", None)
world = Path(snakemake.input.instances).parent.parent  # noqa: F821
info = train_demo_model(world, snakemake.output[0], **t)  # noqa: F821
log.info("trained demo model: %s", info)
