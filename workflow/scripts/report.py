"""Render reports/index.html from results/ and resources/paper_results.csv (never runs a model)."""

from vcdflow.shim import start

start(snakemake)  # noqa: F821

from vcdflow.report import build_report  # noqa: E402
from vcdflow.report.provenance import collect_provenance  # noqa: E402
from vcdflow.t2i.reconstruct import convis_extra_images  # noqa: E402

p = snakemake.params  # noqa: F821
key = lambda g: (g["benchmark"], g["split"], g["model"], g["method"], int(g["seed"]))  # noqa: E731
path = "results/{benchmark}/{split}/{model}/{method}/seed{seed}"
result_files = {key(g): path.format(**g) + ".jsonl" for g in p.grid}
scored_files = {key(g): path.format(**g) + ".scored.jsonl" for g in p.grid}
extra_images = convis_extra_images(p.grid, p.convis_labels, result_files, snakemake.input.convis)  # noqa: F821
build_report(
    snakemake.input.metrics,  # noqa: F821
    snakemake.output[0],  # noqa: F821
    result_files=result_files,
    scored_files=scored_files,
    runs=p.runs,
    paper_results=snakemake.input.paper,  # noqa: F821
    config=p.config,
    demo=p.demo,
    max_error_fraction=p.report["max_error_fraction"],
    provenance=collect_provenance(config=p.config),
    extra_images=extra_images,
)
