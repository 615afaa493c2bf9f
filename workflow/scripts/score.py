"""Score one result file into per-item outcomes and metric rows."""

from vcdflow.shim import start

log = start(snakemake)  # noqa: F821

from vcdflow.scoring import score_file  # noqa: E402

w = snakemake.wildcards  # noqa: F821
scores = score_file(
    snakemake.params.bench,  # noqa: F821
    snakemake.input.results,  # noqa: F821
    snakemake.output.scored,  # noqa: F821
    snakemake.output.metrics,  # noqa: F821
    model=w.model, method=w.method, seed=int(w.seed),
)
log.info("scores: %s", scores)
