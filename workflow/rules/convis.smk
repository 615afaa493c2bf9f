# ConVis (Park et al., AAAI 2025; yejipark-m/ConVis): the model captions each benchmark image
# n times (nucleus sampling), a text-to-image model renders every caption, and decoding contrasts
# the original image against the renders: s = (1+a) l(v) - a (1/n) sum_i l(v'_i).
#
#   convis_captions      model x benchmark x shard  -> results/convis/captions/.../{shard}-of-{n}.jsonl
#   convis_reconstruct   model x benchmark          -> results/convis/manifests/{benchmark}/{model}.json
#                        (PNG renders in a cache keyed by model, image, caption seed, T2I config hash:
#                        reruns reuse every good file and regenerate missing/corrupt ones)
#   train_demo_t2i       the demo world's T2I model (weights are shipped in resources/demo_t2i;
#                        this rule regenerates them on demand, see resources/demo_t2i/README.md)
#   convis_t2i_download  the paper's SDXL base + Hyper-SD 1-step UNet (t2i.kind: sdxl_hyper)
#
# Decode jobs of methods that declare the convis_reconstructions input depend on the manifest of their
# (benchmark, model) through decode_inputs(): the method declares the input
# (vcdflow.config.method_inputs). Device and lock folder are read at job time (never params).


rule convis_captions:
    input:
        unpack(convis_caption_inputs),
    output:
        CONVIS_CAPTIONS,
    log:
        "logs/convis/captions/{benchmark}/{model}/{shard}-of-{nshards}.log",
    benchmark:
        "logs/benchmarks/convis/captions/{benchmark}/{model}/{shard}-of-{nshards}.tsv"
    conda:
        "../../envs/vcdflow.yaml"
    threads: config["threads"]
    resources:
        gpu=gpus_per_job(),
    params:
        benches=convis_benches,
        model=convis_model,
        caption=convis_caption_settings(),
    script:
        "../scripts/convis_captions.py"


rule convis_reconstruct:
    input:
        captions=convis_caption_shards,
        t2i=CONVIS_T2I.get("path", "resources/demo_t2i"),  # shipped demo weights or a download
    output:
        CONVIS_MANIFEST,
    log:
        "logs/convis/reconstruct/{benchmark}/{model}.log",
    benchmark:
        "logs/benchmarks/convis/reconstruct/{benchmark}/{model}.tsv"
    conda:
        "../../envs/vcdflow.yaml"
    threads: config["threads"]
    resources:
        gpu=gpus_per_job(),
    params:
        t2i=CONVIS_T2I,
        model=convis_model_name,
        n_captions=int(CONVIS.get("n_captions", 4)),
        cache_dir=CONVIS.get("cache_dir", "results/convis/images"),
    script:
        "../scripts/convis_reconstruct.py"


rule train_demo_t2i:
    input:
        captions="resources/demo/world/annotations/captions_train.json",
        images="resources/demo/world/images",
    output:
        directory(CONVIS.get("demo_t2i", {}).get("out", "resources/demo_t2i_trained")),
    log:
        "logs/convis/train_demo_t2i.log",
    benchmark:
        "logs/benchmarks/convis/train_demo_t2i.tsv"
    conda:
        "../../envs/vcdflow.yaml"
    threads: int(CONVIS.get("demo_t2i", {}).get("threads", 2))
    resources:
        gpu=gpus_per_job(),
    params:
        train=CONVIS.get("demo_t2i", {}),
        device=config["device"],
        gpu_lock_dir=config["gpu_lock_dir"],
    script:
        "../scripts/convis_train_demo_t2i.py"


if CONVIS_T2I.get("kind") == "sdxl_hyper":

    localrules:
        convis_t2i_download,

    rule convis_t2i_download:
        output:
            directory(CONVIS_T2I["path"]),
        log:
            "logs/convis/t2i_download.log",
        retries: 2
        conda:
            "../../envs/vcdflow.yaml"
        params:
            t2i=CONVIS_T2I,
            offline=config["offline"],
        script:
            "../scripts/convis_t2i_download.py"
