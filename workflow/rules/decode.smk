# Decoding: one job per shard of a (benchmark, split, model, method, seed) result file.
# A shard loads the model once, checkpoints every batch to a .partial file beside its output
# and resumes from it after a kill; the merge step concatenates shards in item order.


rule decode:
    input:
        unpack(decode_inputs),
    output:
        "results/shards/{benchmark}/{split}/{model}/{method}/seed{seed}/{shard}-of-{nshards}.jsonl",
    log:
        "logs/decode/{benchmark}/{split}/{model}/{method}/seed{seed}/{shard}-of-{nshards}.log",
    benchmark:
        "logs/benchmarks/decode/{benchmark}/{split}/{model}/{method}/seed{seed}/{shard}-of-{nshards}.tsv"
    threads: config["threads"]
    resources:
        gpu=gpus_per_job(),
    params:
        run=run_config,
    conda:
        "../../envs/vcdflow.yaml"
    script:
        "../scripts/decode.py"


rule merge_shards:
    input:
        shard_files,
    output:
        "results/{benchmark}/{split}/{model}/{method}/seed{seed}.jsonl",
    log:
        "logs/merge/{benchmark}/{split}/{model}/{method}/seed{seed}.log",
    conda:
        "../../envs/vcdflow.yaml"
    script:
        "../scripts/merge_shards.py"
