# HALC's auxiliary models (vcdflow.aux_models): an open-vocabulary detector, an
# image-text scorer and a spaCy POS tagger, fetched once into resources/halc/<name> by a local rule
# and loaded by the halc method from there (params detector/scorer/tagger = those folders).
# Decode jobs of halc depend on resources/halc/{grounding_dino_tiny,blip_large,spacy_sm} through
# decode_inputs() (vcdflow.config.METHOD_INPUTS "halc_aux"; vcdflow.runner attaches them as the
# three params, their weights' digests in the run hash). blip_large has no commit pinned here: its
# "main" is resolved at the first download and recorded in the revisions lock
# (vcdflow.data.hub_revisions; a later download of another commit fails naming both). The decode
# jobs need spaCy installed (.[amber]) to load spacy_sm.
#
#   resources/halc/grounding_dino_tiny  IDEA-Research/grounding-dino-tiny (transformers port; HALC's
#                                       default detector is GroundingDINO SwinT-OGC = the tiny model)
#   resources/halc/owlv2                google/owlv2-base-patch16-ensemble (HALC's --detector owlv2)
#   resources/halc/blip_large           Salesforce/blip-image-captioning-large (HALC's BLIP score;
#                                       "main", pinned at the first download by the revisions lock)
#   resources/halc/clip_b32             openai/clip-vit-base-patch32 (HALC's CLIP score)
#   resources/halc/spacy_sm             spaCy en_core_web_sm 3.8.0 model folder (from the wheel)
#
# Hub snapshots go through vcdflow.data.download.hf_snapshot (pinned commit, LFS files sha256-checked
# by the hub client; a branch resolved once and recorded in the revisions lock, see above); the spaCy wheel
# through vcdflow.data.fetch.fetch_halc_aux → vcdflow.data.download.download (sha256-checked,
# resumable) and extract. Revisions and the wheel's sha256 come from third-party pinned files
# (several agreeing ones), not checked here. With offline: true nothing is fetched: a pre-placed
# folder is checked and a missing one is named.

HALC_AUX = {
    "grounding_dino_tiny": {
        "hf": "IDEA-Research/grounding-dino-tiny",
        "revision": "a2bb814dd30d776dcf7e30523b00659f4f141c71",
    },
    "owlv2": {
        "hf": "google/owlv2-base-patch16-ensemble",
        "revision": "cfd3195ba4ea9592eec887ded089f4c08eff231d",
    },
    "blip_large": {"hf": "Salesforce/blip-image-captioning-large", "revision": "main"},
    "clip_b32": {
        "hf": "openai/clip-vit-base-patch32",
        "revision": "3d74acf9a28c67741b2f4f2ea7635f0aaf6f0268",
    },
    "spacy_sm": {
        "url": "https://github.com/explosion/spacy-models/releases/download/"
        "en_core_web_sm-3.8.0/en_core_web_sm-3.8.0-py3-none-any.whl",
        "sha256": "1932429db727d4bff3deed6b34cfc05df17794f4a52eeb26cf8928f7c1a0fb85",
        "strip": "en_core_web_sm/en_core_web_sm-3.8.0",
    },
}


rule download_halc_aux:
    output:
        directory("resources/halc/{aux}"),
    log:
        "logs/halc/{aux}.log",
    wildcard_constraints:
        aux="|".join(HALC_AUX),
    retries: 3
    conda:
        "../../envs/vcdflow.yaml"
    params:
        spec=lambda wildcards: HALC_AUX[wildcards.aux],
        offline=config["offline"],
    script:
        "../scripts/halc_aux.py"
