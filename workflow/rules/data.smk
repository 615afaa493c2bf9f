# Real benchmark data (world: real). Every download is a local rule with retries: streamed,
# resumable, size- and checksum-verified, moved into place only when verified. With
# `offline: true` the same rules only verify pre-placed files and name each missing one.


rule download_pope:
    output:
        "resources/pope/{dataset}/{version}/{split}.json",
    log:
        "logs/data/pope/{dataset}/{version}/{split}.log",
    retries: 3
    conda:
        "../../envs/vcdflow.yaml"
    params:
        offline=config["offline"],
    script:
        "../scripts/download_pope.py"


rule build_pope:
    # POPE for your own COCO-format data: a pope_<name> entry with `build: {instances: ...}`
    input:
        instances=pope_build_instances,
    output:
        expand(POPE_BUILT, split=POPE_STRATEGIES, allow_missing=True),
    log:
        "logs/data/build_pope/{benchmark}.log",
    conda:
        "../../envs/vcdflow.yaml"
    params:
        n_images=lambda wc: pope_build(wc)["n_images"],
        seed=lambda wc: pope_build(wc)["seed"],
        n_pos=lambda wc: pope_build(wc)["n_pos"],
        stats=lambda wc: pope_build(wc)["stats"],
        strategies=POPE_STRATEGIES,
        prefix=lambda wc: wc.benchmark,
    script:
        "../scripts/build_pope.py"


rule download_coco_annotations:
    output:
        instances_train="resources/coco/annotations/instances_train2014.json",
        instances_val="resources/coco/annotations/instances_val2014.json",
        captions_train="resources/coco/annotations/captions_train2014.json",
        captions_val="resources/coco/annotations/captions_val2014.json",
    log:
        "logs/data/coco_annotations.log",
    retries: 3
    conda:
        "../../envs/vcdflow.yaml"
    params:
        entry="coco/annotations_trainval2014",
        offline=config["offline"],
        strip="annotations",
    script:
        "../scripts/download_zip.py"


rule download_coco_val2014:
    output:
        directory("resources/coco/val2014"),
    log:
        "logs/data/coco_val2014.log",
    retries: 3
    conda:
        "../../envs/vcdflow.yaml"
    params:
        entry="coco/val2014",
        offline=config["offline"],
        strip="val2014",
    script:
        "../scripts/download_zip.py"


rule download_gqa_images:
    output:
        directory("resources/gqa/images"),
    log:
        "logs/data/gqa_images.log",
    retries: 3
    conda:
        "../../envs/vcdflow.yaml"
    params:
        entry="gqa/images",
        offline=config["offline"],
        strip="images",
    script:
        "../scripts/download_zip.py"


rule download_nltk_data:
    output:
        directory("resources/nltk_data"),
    log:
        "logs/data/nltk_data.log",
    retries: 3
    conda:
        "../../envs/vcdflow.yaml"
    params:
        offline=config["offline"],
    script:
        "../scripts/download_nltk.py"


rule download_mme:
    output:
        directory("resources/mme/parquet"),
    log:
        "logs/data/mme_parquet.log",
    retries: 3
    conda:
        "../../envs/vcdflow.yaml"
    params:
        offline=config["offline"],
    script:
        "../scripts/download_mme.py"


rule prepare_mme:
    input:
        "resources/mme/parquet",
    output:
        directory("resources/mme/release"),
    log:
        "logs/data/mme_release.log",
    conda:
        "../../envs/vcdflow.yaml"
    script:
        "../scripts/prepare_mme.py"


rule download_amber_file:
    output:
        "resources/amber/data/{name}.{ext}",
    log:
        "logs/data/amber/{name}.{ext}.log",
    wildcard_constraints:
        name=r"annotations|relation|safe_words|metrics|query/query_[a-z_-]+",
        ext=r"json|txt",
    retries: 3
    conda:
        "../../envs/vcdflow.yaml"
    params:
        offline=config["offline"],
    script:
        "../scripts/download_amber.py"


rule download_spacy_model:
    output:
        directory("resources/spacy/en_core_web_lg"),
    log:
        "logs/data/spacy_model.log",
    retries: 3
    conda:
        "../../envs/vcdflow.yaml"
    params:
        entry="spacy/en_core_web_lg",
        offline=config["offline"],
        strip="en_core_web_lg/en_core_web_lg-3.8.0",  # the model folder inside the wheel
    script:
        "../scripts/download_zip.py"


rule download_amber_images:
    output:
        directory("resources/amber/image"),
    log:
        "logs/data/amber_images.log",
    retries: 3
    conda:
        "../../envs/vcdflow.yaml"
    params:
        entry="amber/images",
        offline=config["offline"],
        strip="image",
    script:
        "../scripts/download_zip.py"


rule download_chair_synonyms:
    output:
        "resources/chair/synonyms.txt",
    log:
        "logs/data/chair_synonyms.log",
    retries: 3
    conda:
        "../../envs/vcdflow.yaml"
    params:
        offline=config["offline"],
    script:
        "../scripts/download_chair_synonyms.py"
