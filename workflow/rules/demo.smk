# The embedded demo world: procedural COCO-format scenes, POPE/CHAIR inputs, the demo LLaVA.
# Built only when config["world"] == "demo"; every output is seeded and deterministic.


rule build_demo_world:
    output:
        instances_train="resources/demo/world/annotations/instances_train.json",
        instances_val="resources/demo/world/annotations/instances_val.json",
        captions_train="resources/demo/world/annotations/captions_train.json",
        captions_val="resources/demo/world/annotations/captions_val.json",
        images=directory("resources/demo/world/images"),
    log:
        "logs/demo/build_demo_world.log",
    conda:
        "../../envs/vcdflow.yaml"
    params:
        n_train=config["demo"]["n_train"],
        n_val=config["demo"]["n_val"],
        image_size=config["demo"]["image_size"],
        seed=config["demo"]["seed"],
    script:
        "../scripts/build_demo_world.py"


rule build_demo_pope:
    input:
        instances="resources/demo/world/annotations/instances_val.json",
    output:
        expand("resources/demo/pope/demo_pope_{split}.json", split=DEMO_POPE_SPLITS),
    log:
        "logs/demo/build_demo_pope.log",
    conda:
        "../../envs/vcdflow.yaml"
    params:
        n_images=config["demo"]["pope_images"],
        seed=config["demo"]["seed"],
        strategies=DEMO_POPE_SPLITS,
        prefix="demo",
        n_pos=3,
        stats="sampled",
    script:
        "../scripts/build_pope.py"


rule demo_chair_inputs:
    output:
        synonyms="resources/demo/chair_synonyms.txt",
        nltk_data=directory("resources/demo/nltk_data"),
    log:
        "logs/demo/demo_chair_inputs.log",
    conda:
        "../../envs/vcdflow.yaml"
    script:
        "../scripts/demo_chair_inputs.py"


rule train_demo_model:
    input:
        instances="resources/demo/world/annotations/instances_train.json",
        captions="resources/demo/world/annotations/captions_train.json",
        images="resources/demo/world/images",
    output:
        directory("resources/demo/model"),
    log:
        "logs/demo/train_demo_model.log",
    benchmark:
        "logs/benchmarks/demo/train_demo_model.tsv"
    conda:
        "../../envs/vcdflow.yaml"
    threads: config["demo"]["train"]["threads"]
    params:
        train=config["demo"]["train"],
        # the shipped weights (resources/demo_model/), used when trained on these very inputs
        shipped=demo_model_shipped(),
    script:
        "../scripts/demo_model.py"


rule build_demo_mme:
    input:
        instances="resources/demo/world/annotations/instances_val.json",
        images="resources/demo/world/images",
    output:
        directory("resources/demo/mme"),
    log:
        "logs/demo/build_demo_mme.log",
    conda:
        "../../envs/vcdflow.yaml"
    params:
        n_images=config["demo"].get("mme_images", 30),
        seed=config["demo"]["seed"],
        # Question stems only: MME's " Please answer yes or no." holds "or", an <unk> to the demo
        # model (greedy existence score 140 of 200 with it, 175 with the POPE suffix); the demo
        # config adds its suffix through benchmarks.mme.prompt, as for POPE.
        suffix="",
    script:
        "../scripts/build_demo_mme.py"


rule build_demo_amber:
    input:
        instances="resources/demo/world/annotations/instances_val.json",
        images="resources/demo/world/images",
    output:
        annotations="resources/demo/amber/data/annotations.json",
        relation="resources/demo/amber/data/relation.json",
        safe_words="resources/demo/amber/data/safe_words.txt",
        queries=expand(
            "resources/demo/amber/data/query/query_{task}.json",
            task=[
                "all",
                "generative",
                "discriminative",
                "discriminative-existence",
                "discriminative-attribute",
                "discriminative-relation",
            ],
        ),
        images=directory("resources/demo/amber/image"),
        manifest="resources/demo/amber/manifest.json",
    log:
        "logs/demo/build_demo_amber.log",
    conda:
        "../../envs/vcdflow.yaml"
    params:
        n_images=config["demo"].get("amber_images", 60),
        seed=config["demo"]["seed"],
    script:
        "../scripts/build_demo_amber.py"
