# text_cd's amateur model (vcdflow.decoding.amateur): a smaller model of the expert's
# family with the same tokenizer. In the demo world the workflow trains one: a smaller demo LLaVA
# (1 LM layer, 64 hidden) on the same scenes and steps schedule as the demo model, with its own seed.
# Real models: put the amateur (e.g. TinyLlama-1.1B for LLaVA-1.5, Qwen2.5-VL-3B for Qwen2.5-VL-7B)
# in resources/amateurs/<model> (a save_pretrained folder load_vlm loads).
#
#   train_demo_amateur   demo world -> resources/amateurs/demo (training.json inside)
#
# Decode jobs of methods that declare the amateur_model input (text_cd) depend on
# resources/amateurs/{model} through decode_inputs() (vcdflow.config.METHOD_INPUTS).

DEMO_AMATEUR = {
    "text_hidden": 64,
    "text_layers": 1,
    "text_heads": 4,
    "vision_hidden": 48,
    "vision_layers": 1,
    "align_steps": 300,
    "steps": 600,
    "batch_size": 32,
    "lr": 0.002,
    "seed": 1,
    **config.get("demo", {}).get("amateur", {}),
}


rule train_demo_amateur:
    input:
        instances="resources/demo/world/annotations/instances_train.json",
        captions="resources/demo/world/annotations/captions_train.json",
        images="resources/demo/world/images",
    output:
        directory("resources/amateurs/demo"),
    log:
        "logs/demo/train_demo_amateur.log",
    benchmark:
        "logs/benchmarks/demo/train_demo_amateur.tsv"
    conda:
        "../../envs/vcdflow.yaml"
    threads: config.get("demo", {}).get("train", {}).get("threads", 2)
    params:
        amateur=DEMO_AMATEUR,
    script:
        "../scripts/train_demo_amateur.py"
