# MMVP, HallusionBench, LLaVA-Bench (in the wild), MMHal-Bench and the leading-query POPE of LQCD.
# The benchmarks themselves are registry entries (src/vcdflow/benchmarks/<kind>.py); decoding and
# scoring go through the generic rules. Here: their download rules and build_leading_pope.
# Sources and checksums: vcdflow.benchmarks.sources (every file without a published checksum is
# UNVERIFIED; the sha256 each download saw is written to <folder>/SHA256SUMS).


rule download_mmvp:
    # HF dataset MMVP/MMVP (revision main): Questions.csv + MMVP Images/1..300.jpg.
    # UNVERIFIED: no checksum could be obtained offline; SHA256SUMS records what was seen.
    output:
        directory("resources/mmvp"),
    log:
        "logs/data/mmvp.log",
    retries: 3
    conda:
        "../../envs/vcdflow.yaml"
    params:
        kind="mmvp",
        offline=config["offline"],
    script:
        "../scripts/download_bench_extra.py"


rule download_hallusionbench:
    # HallusionBench.json from tianyi-lab/HallusionBench@744007c: sha256 verified (git blob);
    # images hallusion_bench.zip (Google Drive, that README): UNVERIFIED, sha256 seen recorded.
    output:
        questions="resources/hallusionbench/HallusionBench.json",
        images=directory("resources/hallusionbench/hallusion_bench"),
    log:
        "logs/data/hallusionbench.log",
    retries: 3
    conda:
        "../../envs/vcdflow.yaml"
    params:
        kind="hallusionbench",
        offline=config["offline"],
    script:
        "../scripts/download_bench_extra.py"


rule download_llavabench:
    # HF dataset liuhaotian/llava-bench-in-the-wild (revision main): questions.jsonl,
    # context.jsonl, answers_gpt4.jsonl, images/001..024.jpg. UNVERIFIED: sha256 seen recorded.
    output:
        directory("resources/llavabench"),
    log:
        "logs/data/llavabench.log",
    retries: 3
    conda:
        "../../envs/vcdflow.yaml"
    params:
        kind="llavabench",
        offline=config["offline"],
    script:
        "../scripts/download_bench_extra.py"


rule download_mmhal:
    # HF dataset Shengcao1006/MMHal-Bench (revision main): response_template.json and
    # test_data.zip (-> images/). UNVERIFIED (file names from third-party scripts): sha256 seen recorded.
    output:
        questions="resources/mmhal/response_template.json",
        images=directory("resources/mmhal/images"),
    log:
        "logs/data/mmhal.log",
    retries: 3
    conda:
        "../../envs/vcdflow.yaml"
    params:
        kind="mmhal",
        offline=config["offline"],
    script:
        "../scripts/download_bench_extra.py"


rule build_leading_pope:
    # LQCD's leading-query POPE: every question of `base` ({split} filled in) with a leading cue
    # (vcdflow.data.lqcd)
    input:
        base=lambda wc: bench_config(wc.benchmark, wc.split)["base"],
    output:
        "resources/leading_pope/{benchmark}/{split}.json",
    log:
        "logs/data/leading_pope/{benchmark}/{split}.log",
    conda:
        "../../envs/vcdflow.yaml"
    params:
        direction=lambda wc: config["benchmarks"][wc.benchmark].get("direction", "against"),
    script:
        "../scripts/build_leading_pope.py"


localrules:
    download_mmvp,
    download_hallusionbench,
    download_llavabench,
    download_mmhal,
    build_leading_pope,
