"""Train the demo text-to-image pipeline on the demo world (seeded; see vcdflow.t2i.demo_t2i)."""

from vcdflow.shim import start

log = start(snakemake)  # noqa: F821

from pathlib import Path  # noqa: E402

from vcdflow.gpu import gpu_lease  # noqa: E402
from vcdflow.t2i.demo_t2i import train_demo_t2i  # noqa: E402

t = dict(snakemake.params.train)  # noqa: F821
t.pop("out", None)
t.pop("threads", None)
device = snakemake.params.device  # noqa: F821
world = Path(snakemake.input.captions).parent.parent  # noqa: F821


def train():
    info = train_demo_t2i(world, snakemake.output[0], threads=snakemake.threads, device=device, **t)  # noqa: F821
    log.info("trained demo T2I: %s", {k: v for k, v in info.items() if k != "loss_every_100"})


if device == "cpu":
    train()
else:
    with gpu_lease(snakemake.params.gpu_lock_dir, log=log.info):  # noqa: F821
        train()
