# Decode rules: one job per shard of a (benchmark, split, model, protocol, method, mode, seed) result.
# A shard loads the model once, checkpoints every batch to a .partial file beside its output
# and resumes from it after a kill; the merge step concatenates shards in item order.
# params.run holds only what decides the records (vcdflow.config.RunSpec); how the job runs
# (device, threads, batch size, lock folder) is read from the config at job time
# (vcdflow.config.execution), so changing it never re-decodes.


rule decode:
    input:
        unpack(decode_inputs),
    output:
        "results/shards/{benchmark}/{split}/{model}/{protocol}/{method}/{mode}/seed{seed}/{shard}-of-{nshards}.jsonl",
    log:
        "logs/decode/{benchmark}/{split}/{model}/{protocol}/{method}/{mode}/seed{seed}/{shard}-of-{nshards}.log",
    benchmark:
        "logs/benchmarks/decode/{benchmark}/{split}/{model}/{protocol}/{method}/{mode}/seed{seed}/{shard}-of-{nshards}.tsv"
    conda:
        "../../envs/vcdflow.yaml"
    threads: config["threads"]
    resources:
        gpu=gpus_per_job(),
    params:
        run=run_spec,
    script:
        "../scripts/decode.py"


rule merge_shards:
    input:
        shard_files,
    output:
        jsonl="results/{benchmark}/{split}/{model}/{protocol}/{method}/{mode}/seed{seed}.jsonl",
        meta="results/{benchmark}/{split}/{model}/{protocol}/{method}/{mode}/seed{seed}.meta.json",
    log:
        "logs/merge/{benchmark}/{split}/{model}/{protocol}/{method}/{mode}/seed{seed}.log",
    conda:
        "../../envs/vcdflow.yaml"
    params:
        seed=merge_seed,
    script:
        "../scripts/merge_shards.py"


# config group_decode: one job per (model, protocol, method label, mode) decodes every result of
# the label (every benchmark, split, seed and shard; see GROUP_* in common.smk) with the model
# loaded once, into the same shard and result files, with the same checkpoint and resume, as the
# rules above.
if GROUP_PROTOCOLS and not LABEL_BATCHES:

    rule decode_group:
        input:
            unpack(group_decode_inputs),
        output:
            results=group_outputs(".jsonl"),
            meta=group_outputs(".meta.json"),
        log:
            "logs/decode_group/{model}/{protocol}/{method}/{mode}.log",
        benchmark:
            "logs/benchmarks/decode_group/{model}/{protocol}/{method}/{mode}.tsv"
        wildcard_constraints:
            protocol=_alternation(GROUP_PROTOCOLS),
            method=label_alternation(FULL_LABELS),
        conda:
            "../../envs/vcdflow.yaml"
        threads: config["threads"]
        resources:
            gpu=gpus_per_job(),
        params:
            jobs=group_runs,
            name=group_name,
        script:
            "../scripts/decode_group.py"

    ruleorder: decode_group > merge_shards


# config group_labels > 1 or group_results: one decode job per batch of results of a (model,
# protocol) (LABEL_BATCHES in common.smk: how batches are cut), the model loaded once for all of
# them; each result decoded shard by shard with its checkpoints, then merged, in order.
for batch, batch_jobs in LABEL_BATCHES.items():

    rule:
        name:
            f"decode_batch_{batch}"
        input:
            **batch_decode_inputs(batch_jobs),
        output:
            results=batch_outputs(batch_jobs, ".jsonl"),
            meta=batch_outputs(batch_jobs, ".meta.json"),
        log:
            f"logs/decode_batch/{batch}.log",
        benchmark:
            f"logs/benchmarks/decode_batch/{batch}.tsv"
        conda:
            "../../envs/vcdflow.yaml"
        threads: batch_threads("decode_batch", config["threads"])
        resources:
            **batch_resources("decode_batch", gpu=gpus_per_job()),
        params:
            jobs=batch_runs(batch_jobs),
            name=batch,
        script:
            "../scripts/decode_group.py"
