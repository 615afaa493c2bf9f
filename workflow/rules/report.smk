# The reproduction report: reads results/ and resources/paper_results.csv only.


rule report:
    input:
        metrics="results/metrics.csv",
        results=all_results(),
        scored=all_scored(),
        sidecars=all_sidecars(),
        paper=paper_results(),
        convis=convis_report_manifests(),
    output:
        report(
            "reports/index.html",
            caption="../report/index.rst",
            category="Report",
        ),
    log:
        "logs/report/report.log",
    conda:
        "../../envs/vcdflow.yaml"
    params:
        runs=report_runs(),
        grid=GRID,
        config=config,
        demo=DEMO,
        report=config["report"],
        convis_labels=convis_labels(),
    script:
        "../scripts/report.py"
