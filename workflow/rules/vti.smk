# VTI (Liu, Ye, Zou, ICLR 2025; shengliu66/VTI): steering directions fitted ONCE per model
# (fitted once per model; the fitting code is vcdflow.steering_fit, the method vcdflow.decoding.methods.vti).
#
#   vti_fit_list      the official fit list (100 COCO train2014 records), pinned URL + sha256
#   vti_fit_images    its COCO train2014 images, one file each (COCO publishes no per-image checksum:
#                     first download unverified and logged, sha256 recorded in SHA256SUMS.json and
#                     checked on every later run; offline: only verifies pre-placed files)
#   vti_demo_fit_set  the demo world: fit records from the demo world's TRAIN split
#   fit_vti           model x fit config -> results/vti/{model}/{key}.pt, key = fit_key(model, fit
#                     settings, fit-set identity): another fit config is another file, never a rerun
#   vti_all           the directions of every configured model
#
# Config (all optional): vti: {fit_set: official|demo (default: demo in the demo world),
#   fit: {num_demos, num_trials, mask_ratio, seed, fit_alpha_image, vision, text, chat_template, system}}.
# A vti method entry takes the file as its `directions` parameter (vti_directions(model) below).

# (the fit set, its files and vti_directions() are defined in common.smk: the linter keeps
# functions out of rule files)


rule vti_all:
    input:
        [vti_directions(m) for m in MODELS],


rule vti_fit_list:
    output:
        "resources/vti/hallucination_vti_demos.jsonl",
    log:
        "logs/vti/fit_list.log",
    retries: 3
    conda:
        "../../envs/vcdflow.yaml"
    params:
        offline=config["offline"],
    script:
        "../scripts/fit_vti.py"


rule vti_fit_images:
    input:
        fit_set="resources/vti/hallucination_vti_demos.jsonl",
    output:
        directory("resources/vti/train2014"),
    log:
        "logs/vti/fit_images.log",
    retries: 3
    conda:
        "../../envs/vcdflow.yaml"
    params:
        offline=config["offline"],
    script:
        "../scripts/fit_vti.py"


rule vti_demo_fit_set:
    input:
        instances="resources/demo/world/annotations/instances_train.json",
    output:
        "resources/vti/demo_fit_set.jsonl",
    log:
        "logs/vti/demo_fit_set.log",
    conda:
        "../../envs/vcdflow.yaml"
    script:
        "../scripts/fit_vti.py"


rule fit_vti:
    input:
        model=lambda wc: model_dir(wc.model),
        fit_set=VTI_FIT_FILE,
        images=_vti_images_input,
    output:
        "results/vti/{model}/{key}.pt",
    log:
        "logs/vti/fit/{model}/{key}.log",
    benchmark:
        "logs/benchmarks/vti/fit/{model}/{key}.tsv"
    conda:
        "../../envs/vcdflow.yaml"
    threads: config["threads"]
    resources:
        gpu=gpus_per_job(),
    params:
        fit=lambda wc: vti_fit.settings_for(config, wc.model),
        fit_set_id=vti_fit.fit_set_identity(VTI_FIT_SET),
        image_dir=VTI_IMAGES,
        dtype=lambda wc: config["models"][wc.model].get("dtype", "float32"),
    script:
        "../scripts/fit_vti.py"
