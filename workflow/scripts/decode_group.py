"""Decode every result of one (model, protocol, method label, mode), or of a batch of labels
(config ``group_labels``), with the model loaded once (config ``group_decode``; see
vcdflow.runner.decode_group).

Each result is decoded into its shard file exactly as rule decode does (lock, per-batch
checkpoint, resume, sidecar) and merged into its result file as rule merge_shards does; a
finished shard of the same run is not decoded again after a restart. Bad input ends the job with
the one-line message of :mod:`vcdflow.errors` (also on the console), ``VCDFLOW_DEBUG=1`` adds the
traceback.
"""

import sys

from vcdflow.shim import start

log = start(snakemake)  # noqa: F821

from vcdflow import errors  # noqa: E402
from vcdflow.config import execution, job_run  # noqa: E402
from vcdflow.gpu import gpu_lease  # noqa: E402
from vcdflow.runner import decode_group  # noqa: E402

smk = snakemake  # noqa: F821
name = smk.params.name


def jobs():
    """params.jobs (what decides the records) joined with the execution settings read now."""
    out = []
    for job in smk.params.jobs:
        spec = job["run"]
        ex = execution(
            smk.config, model=spec["model"]["name"], benchmark=spec["benchmark"]["name"], threads=smk.threads
        )
        out.append(dict(job, run=job_run(spec, ex)))
    return out


def decode():
    todo = jobs()
    import contextlib

    lease = (
        contextlib.nullcontext()
        if todo[0]["run"]["device"] == "cpu"
        else gpu_lease(todo[0]["run"]["gpu_lock_dir"], log=log.info)
    )
    with lease:
        import torch  # after CUDA_VISIBLE_DEVICES is set

        torch.set_num_threads(smk.threads)
        decode_group(todo, say=log.info)


rc = errors.guard(
    f"decode {name}",
    decode,
    echo=sys.__stderr__,
    kept="nothing is lost: each shard's .partial file keeps its finished records and the rerun resumes",
)
if rc:
    if sys.stderr is not sys.__stderr__:
        print(f"decode {name}: see {smk.log[0]}", file=sys.__stderr__)
    sys.exit(rc)
