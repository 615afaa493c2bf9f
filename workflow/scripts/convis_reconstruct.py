"""ConVis step 2: render every caption with the T2I pipeline (cached) and write the manifest."""

from vcdflow.shim import start

log = start(snakemake)  # noqa: F821

from vcdflow.gpu import gpu_lease  # noqa: E402
from vcdflow.t2i.reconstruct import run_reconstruct  # noqa: E402

p = snakemake.params  # noqa: F821


def render():
    import torch  # imported after CUDA_VISIBLE_DEVICES is set

    torch.set_num_threads(snakemake.threads)  # noqa: F821
    res = run_reconstruct(list(snakemake.input.captions), dict(p.t2i), snakemake.output[0],  # noqa: F821
                          model=p.model, cache_dir=p.cache_dir, n_captions=p.n_captions, device=p.device)
    log.info("reconstructions: %s", res["stats"])


if p.device == "cpu":
    render()
else:
    with gpu_lease(p.gpu_lock_dir, log=log.info):
        render()
