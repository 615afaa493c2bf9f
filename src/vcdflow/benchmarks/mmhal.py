"""MMHal-Bench (Sun et al., LLaVA-RLHF): 96 open questions in 8 types, each answer rated 0-6 by a
chat judge; rating < 3 = hallucination. Split ``all``; scorer :mod:`vcdflow.metrics.mmhal`
(``llava-rlhf/LLaVA-RLHF Eval/eval_gpt_mmhal.py``).

Config entry (``benchmarks.mmhal``): ``questions`` (``response_template.json``), ``images``
(folder of the ``image_src`` file names; rule ``download_mmhal``), ``judge`` (**required**),
``judge_workers``, ``n_items`` (seeded subsample; the per-type averages then use each item's
position in the full file), ``prompt`` (default ``{question}``: ``Eval/eval_scripts/eval_mmhal.sh``
runs model_vqa_mmhal.py with ``--test-prompt ''``, llava-rlhf/LLaVA-RLHF@830a083; the script itself
is not in that repository: UNVERIFIED beyond the flag), ``max_new_tokens`` (1024 as LLaVA-RLHF's
``Eval/model_vqa.py:178``).
"""

from __future__ import annotations

from .base import SINGLE_SPLIT, Benchmark, Column
from .judged import SCORE_KEYS, judge_config, workers


def _splits(cfg):
    return [SINGLE_SPLIT]


def _decode_inputs(bench):
    return {"questions": bench["questions"], "images": bench["images"]}


def _score_inputs(bench):
    return {"questions": bench["questions"]}


def _items(bench):
    from ..metrics import mmhal

    return mmhal.load_items(bench["questions"], bench["images"])


def _load_items(bench):
    from ..runner import seeded_subset

    return seeded_subset(_items(bench), bench.get("n_items"), label="mmhal-subset")


def _score(bench, records):
    from ..metrics import mmhal

    judged = mmhal.judge_items(
        records, _items(bench), judge_config(bench, why="MMHal-Bench"), workers=workers(bench)
    )
    rows = mmhal.score_items(judged)
    for r in rows:  # the report's per-item statistic for a rate of hallucinating answers
        r["hallucinated"] = r["hallucination"]
    return mmhal.score(judged), rows


BENCHMARK = Benchmark(
    answers="open",
    kind="mmhal",
    title="MMHal-Bench",
    splits=_splits,
    decode_inputs=_decode_inputs,
    score_inputs=_score_inputs,
    load_items=_load_items,
    score=_score,
    columns=(
        Column("score", "Score (0–6)", "higher"),
        Column("hallucination_rate", "Hallucination rate", "lower", "chair_s", "paired_bootstrap"),
    ),
    note="Mean judge rating 0–6 and % of answers rated < 3 (hallucinating). Judged numbers: the "
    "judge model is named beside the table (official judge: gpt-4-0314).",
    extra={
        "score_keys": SCORE_KEYS,
        "judged": "always",
        "max_new_tokens": 1024,
    },  # LLaVA-RLHF Eval/model_vqa.py:178
)
