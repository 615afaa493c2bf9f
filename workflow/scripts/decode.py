"""Decode one shard of a result file (see vcdflow.runner)."""

from vcdflow.shim import start

log = start(snakemake)  # noqa: F821

from vcdflow.gpu import gpu_lease  # noqa: E402
from vcdflow.runner import run_shard  # noqa: E402

run = dict(snakemake.params.run)  # noqa: F821
shard, n_shards = int(snakemake.wildcards.shard), int(snakemake.wildcards.nshards)  # noqa: F821

if run["device"] == "cpu":
    import torch

    torch.set_num_threads(snakemake.threads)  # noqa: F821
    run_shard(run, snakemake.output[0], shard=shard, n_shards=n_shards)  # noqa: F821
else:
    with gpu_lease(run["gpu_lock_dir"], log=log.info):
        import torch  # imported after CUDA_VISIBLE_DEVICES is set

        torch.set_num_threads(snakemake.threads)  # noqa: F821
        run_shard(run, snakemake.output[0], shard=shard, n_shards=n_shards)  # noqa: F821
