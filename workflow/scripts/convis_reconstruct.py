"""ConVis step 2: render every caption with the T2I pipeline (cached) and write the manifest."""

from vcdflow.shim import start

log = start(snakemake)  # noqa: F821

from vcdflow.config import execution  # noqa: E402
from vcdflow.gpu import gpu_lease  # noqa: E402
from vcdflow.t2i.reconstruct import run_reconstruct  # noqa: E402

p = snakemake.params  # noqa: F821
ex = execution(snakemake.config, threads=snakemake.threads)  # noqa: F821  (how it runs: never params)


def render():
    import torch  # imported after CUDA_VISIBLE_DEVICES is set

    torch.set_num_threads(ex.threads)
    res = run_reconstruct(
        list(snakemake.input.captions),
        dict(p.t2i),
        snakemake.output[0],  # noqa: F821
        model=p.model,
        cache_dir=p.cache_dir,
        n_captions=p.n_captions,
        device=ex.device,
    )
    log.info("reconstructions: %s", res["stats"])


if ex.device == "cpu":
    render()
else:
    with gpu_lease(ex.gpu_lock_dir, log=log.info):
        render()
