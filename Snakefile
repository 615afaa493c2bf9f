# vcdflow: dataset -> captions -> ConVis reconstructions -> decoding -> scoring -> report.
#
#   snakemake --cores all                      # the embedded demo world (config/config.yaml)
#   snakemake --cores all --resources gpu=4 --configfile config/paper.yaml
#   snakemake --workflow-profile profiles/slurm --configfile config/paper.yaml
from snakemake.utils import min_version, validate

min_version("9.0")


# The demo config is the default; a --configfile (e.g. config/paper.yaml) replaces it
# instead of being merged into it (merging would keep the demo model in a paper grid).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# A config that names a base (`base: paper`) states only what differs from it: lay it over its
# base before validation (vcdflow.overlay; the merge rules are in its docstring).
if "base" in config:
    from vcdflow.overlay import OverlayError, resolve_files
    from snakemake.exceptions import WorkflowError

    try:
        _resolved = resolve_files(config, list(workflow.overwrite_configfiles), workflow.basedir)
    except OverlayError as _exc:
        raise WorkflowError(str(_exc)) from None
    config.clear()
    config.update(_resolved)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    benchmark=_alternation(BENCHMARKS),
    split=_alternation(ALL_SPLITS),
    model=_alternation(MODELS),
    protocol=_alternation(PROTOCOLS),
    method=_alternation(METHOD_LABELS),
    mode=_alternation(MODES),
    seed=r"\d+",
    shard=r"\d+",
    nshards=r"\d+",


include: "workflow/rules/demo.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/benchmarks_extra.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/decode.smk"
include: "workflow/rules/convis.smk"
include: "workflow/rules/amateur.smk"
include: "workflow/rules/vti.smk"
include: "workflow/rules/halc.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/report.smk"


onstart:
    check_optional_packages()
    check_pinned_data()
    check_judge_keys()


onerror:
    set_aside_stale_tables()


localrules:
    all,
    download_pope,
    build_pope,
    download_coco_annotations,
    download_coco_val2014,
    download_gqa_images,
    download_spacy_model,
    download_nltk_data,
    download_mme,
    download_amber_file,
    download_amber_images,
    download_model,
    download_chair_synonyms,
    merge_shards,
    metrics_table,
    report,


rule all:
    default_target: True
    input:
        final_outputs(),
