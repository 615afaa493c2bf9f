"""Train text_cd's demo amateur: a smaller demo LLaVA (same tokenizer) on the demo world's train split."""

from vcdflow.shim import start

log = start(snakemake)  # noqa: F821

from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from vcdflow.models.demo import DemoModelConfig, train_demo_model  # noqa: E402

torch.set_num_threads(snakemake.threads)  # noqa: F821
a = dict(snakemake.params.amateur)  # noqa: F821
sizes = {k: a.pop(k) for k in list(a) if k in DemoModelConfig.__dataclass_fields__}
world = Path(snakemake.input.instances).parent.parent  # noqa: F821
info = train_demo_model(world, snakemake.output[0], config=DemoModelConfig(**sizes), **a)  # noqa: F821
log.info("trained demo amateur: %s", info)
