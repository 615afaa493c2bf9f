"""ConVis step 1: the model captions its benchmark's images n times (see vcdflow.t2i.captions)."""

from vcdflow.shim import start

log = start(snakemake)  # noqa: F821

from vcdflow.config import execution  # noqa: E402
from vcdflow.gpu import gpu_lease  # noqa: E402
from vcdflow.t2i.captions import run_caption_shard  # noqa: E402

p = snakemake.params  # noqa: F821
cfg = snakemake.config  # noqa: F821
# how it runs (never params: changing it must not re-caption)
ex = execution(cfg, model=p.model["name"], threads=snakemake.threads)  # noqa: F821
batch_size = (cfg.get("convis", {}).get("caption", {}) or {}).get("batch_size") or ex.batch_size
kwargs = dict(
    shard=int(snakemake.wildcards.shard),
    n_shards=int(snakemake.wildcards.nshards),  # noqa: F821
    device=ex.device,
    batch_size=int(batch_size),
    progress=True,
)


def caption():
    import torch  # imported after CUDA_VISIBLE_DEVICES is set

    torch.set_num_threads(ex.threads)
    out = run_caption_shard(list(p.benches), dict(p.model), dict(p.caption), snakemake.output[0], **kwargs)  # noqa: F821
    log.info("captions written: %s", out)


if ex.device == "cpu":
    caption()
else:
    with gpu_lease(ex.gpu_lock_dir, log=log.info):
        caption()
