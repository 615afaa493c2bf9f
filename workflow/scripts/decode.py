"""Decode one shard of a result file (see vcdflow.runner).

Logging (resume line K of N, error rows, where the output went) goes to the rule's log; bad
input ends the job with the one-line message of :mod:`vcdflow.errors` (also on Snakemake's
console), ``VCDFLOW_DEBUG=1`` adds the traceback.
"""

import sys

from vcdflow.shim import start

log = start(snakemake)  # noqa: F821

from vcdflow import errors  # noqa: E402
from vcdflow.gpu import gpu_lease  # noqa: E402
from vcdflow.runner import run_shard  # noqa: E402

shard, n_shards = int(snakemake.wildcards.shard), int(snakemake.wildcards.nshards)  # noqa: F821
out = snakemake.output[0]  # noqa: F821


def decode():
    from vcdflow.config import snakemake_run

    run = snakemake_run(snakemake)  # noqa: F821  (params.run + the execution settings read now)
    if run["device"] == "cpu":
        import torch

        torch.set_num_threads(snakemake.threads)  # noqa: F821
        run_shard(run, out, shard=shard, n_shards=n_shards)
    else:
        with gpu_lease(run["gpu_lock_dir"], log=log.info):
            import torch  # imported after CUDA_VISIBLE_DEVICES is set

            torch.set_num_threads(snakemake.threads)  # noqa: F821
            run_shard(run, out, shard=shard, n_shards=n_shards)


rc = errors.guard(
    f"decode {out}",
    decode,
    output=out,
    echo=sys.__stderr__,
    kept=f"nothing is lost: {out}.partial keeps every finished record and the rerun resumes from it",
)
if rc:
    if sys.stderr is not sys.__stderr__:  # the line is in the log; show it on the console too
        print(f"decode {out}: see {snakemake.log[0]}", file=sys.__stderr__)  # noqa: F821
    sys.exit(rc)
