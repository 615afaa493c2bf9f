"""Render reports/index.html from results/ and resources/paper_results.csv (never runs a model)."""

from vcdflow.shim import start

start(snakemake)  # noqa: F821

from vcdflow.config import protocol_differences  # noqa: E402
from vcdflow.data import hub_revisions  # noqa: E402
from vcdflow.report import build_report  # noqa: E402
from vcdflow.report.analysis import run_key  # noqa: E402
from vcdflow.report.provenance import collect_provenance  # noqa: E402
from vcdflow.t2i.reconstruct import convis_extra_images  # noqa: E402

p = snakemake.params  # noqa: F821
path = "results/{benchmark}/{split}/{model}/{protocol}/{method}/{mode}/seed{seed}"
# the report names a run by its label and protocol (run_key: "vcd", "vcd@vcd")
grid = [dict(g, method=run_key(g["method"], g["protocol"]), path=path.format(**g)) for g in p.grid]
key = lambda g: (g["benchmark"], g["split"], g["model"], g["method"], int(g["seed"]))  # noqa: E731
result_files = {key(g): g["path"] + ".jsonl" for g in grid}
scored_files = {key(g): g["path"] + ".scored.jsonl" for g in grid}
convis = sorted({run_key(g["method"], g["protocol"]) for g in p.grid if g["method"] in p.convis_labels})
extra_images = convis_extra_images(grid, convis, result_files, snakemake.input.convis)  # noqa: F821
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
    # the hub commits the config's branches resolved to (config/hub-revisions.lock)
    provenance=collect_provenance(
        config=p.config, extra={"hub_revisions": hub_revisions.lock_rows(p.config)}
    ),
    extra_images=extra_images,
    protocols=protocol_differences(sorted({g["protocol"] for g in p.grid})),
)
