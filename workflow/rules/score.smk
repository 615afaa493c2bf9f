# Scoring: each result file -> per-item outcomes + metric rows; then one long metrics table.


rule score:
    input:
        unpack(score_inputs),
    output:
        scored="results/{benchmark}/{split}/{model}/{protocol}/{method}/{mode}/seed{seed}.scored.jsonl",
        metrics="results/{benchmark}/{split}/{model}/{protocol}/{method}/{mode}/seed{seed}.metrics.csv",
    log:
        "logs/score/{benchmark}/{split}/{model}/{protocol}/{method}/{mode}/seed{seed}.log",
    conda:
        "../../envs/vcdflow.yaml"
    params:
        bench=score_bench,
    script:
        "../scripts/score.py"


rule metrics_table:
    input:
        all_metric_parts(),
    output:
        "results/metrics.csv",
    log:
        "logs/score/metrics_table.log",
    conda:
        "../../envs/vcdflow.yaml"
    script:
        "../scripts/metrics_table.py"


# config group_decode: one scoring job per (model, protocol, method label, mode), as decode_group.
if GROUP_PROTOCOLS and not LABEL_BATCHES:

    rule score_group:
        input:
            unpack(group_score_inputs),
        output:
            scored=group_outputs(".scored.jsonl"),
            metrics=group_outputs(".metrics.csv"),
        log:
            "logs/score_group/{model}/{protocol}/{method}/{mode}.log",
        wildcard_constraints:
            protocol=_alternation(GROUP_PROTOCOLS),
            method=label_alternation(FULL_LABELS),
        conda:
            "../../envs/vcdflow.yaml"
        params:
            parts=group_score_parts,
        script:
            "../scripts/score_group.py"

    ruleorder: score_group > score


# config group_labels > 1 or group_results: one scoring job per label batch, or per SCORE_CUTS
# decode jobs of it where group_results cuts its decoding (SCORE_BATCHES in common.smk).
for batch, batch_jobs in SCORE_BATCHES.items():

    rule:
        name:
            f"score_batch_{batch}"
        input:
            **batch_score_inputs(batch_jobs),
        output:
            scored=batch_outputs(batch_jobs, ".scored.jsonl"),
            metrics=batch_outputs(batch_jobs, ".metrics.csv"),
        log:
            f"logs/score_batch/{batch}.log",
        conda:
            "../../envs/vcdflow.yaml"
        threads: batch_threads("score_batch", 1)
        resources:
            **batch_resources("score_batch"),
        params:
            parts=batch_score_parts(batch_jobs),
        script:
            "../scripts/score_group.py"
