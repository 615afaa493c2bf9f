"""ConVis step 1: the model captions its benchmark's images n times (see vcdflow.t2i.captions)."""

from vcdflow.shim import start

log = start(snakemake)  # noqa: F821

from vcdflow.gpu import gpu_lease  # noqa: E402
from vcdflow.t2i.captions import run_caption_shard  # noqa: E402

p = snakemake.params  # noqa: F821
kwargs = dict(shard=int(snakemake.wildcards.shard), n_shards=int(snakemake.wildcards.nshards),  # noqa: F821
              device=p.device, progress=True)


def caption():
    import torch  # imported after CUDA_VISIBLE_DEVICES is set

    torch.set_num_threads(snakemake.threads)  # noqa: F821
    out = run_caption_shard(list(p.benches), dict(p.model), dict(p.caption), snakemake.output[0], **kwargs)  # noqa: F821
    log.info("captions written: %s", out)


if p.device == "cpu":
    caption()
else:
    with gpu_lease(p.gpu_lock_dir, log=log.info):
        caption()
