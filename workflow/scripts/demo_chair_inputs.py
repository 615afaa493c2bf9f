"""CHAIR inputs of the demo world: its synonyms file and a closed-vocabulary NLTK data folder."""

from vcdflow.shim import start

start(snakemake)  # noqa: F821

from vcdflow.data.demo_chair import build_demo_nltk_data, write_chair_synonyms  # noqa: E402

write_chair_synonyms(snakemake.output.synonyms)  # noqa: F821
build_demo_nltk_data(snakemake.output.nltk_data)  # noqa: F821
