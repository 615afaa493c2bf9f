# vcdflow: dataset -> captions -> ConVis reconstructions -> decoding -> scoring -> report.
#
#   snakemake --cores all                      # the embedded demo world (config/config.yaml)
#   snakemake --cores all --resources gpu=4 --configfile config/paper.yaml
#   snakemake --workflow-profile profiles/slurm --configfile config/paper.yaml
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    benchmark=_alternation(BENCHMARKS),
    split=_alternation(ALL_SPLITS),
    model=_alternation(MODELS),
    method=_alternation(METHOD_LABELS),
    seed=r"\d+",
    shard=r"\d+",
    nshards=r"\d+",


include: "workflow/rules/demo.smk"
include: "workflow/rules/decode.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/report.smk"


localrules:
    all,
    merge_shards,
    metrics_table,
    report,


rule all:
    default_target: True
    input:
        final_outputs(),
