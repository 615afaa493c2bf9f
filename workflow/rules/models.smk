# Model snapshots: a local rule downloads each registry model once into resources/models/<name>
# (token read from the environment inside the package, never a param); decode jobs load it
# offline from that folder.


rule download_model:
    output:
        directory("resources/models/{model}"),
    log:
        "logs/models/{model}.log",
    retries: 3
    conda:
        "../../envs/vcdflow.yaml"
    params:
        hub=hub_model,
        offline=config["offline"],
    script:
        "../scripts/download_model.py"
