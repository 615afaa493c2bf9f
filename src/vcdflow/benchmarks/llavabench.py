"""LLaVA-Bench (in the wild) (Liu et al., LLaVA): 60 questions on 24 images, answers rated by a
chat judge against GPT-4 reference answers; headline = relative score (%). Split ``all``;
scorer :mod:`vcdflow.metrics.llavabench` (``haotian-liu/LLaVA llava/eval/eval_gpt_review_bench.py``
+ ``summarize_gpt_review.py``).

Config entry (``benchmarks.llavabench``): ``root`` (``questions.jsonl``, ``context.jsonl``,
``answers_gpt4.jsonl``, ``images/``; rule ``download_llavabench``), ``judge`` (**required**),
``judge_workers``, ``parser`` — ``official`` (default, ``parse_score``) or ``lmms``; ``n_items``,
``prompt`` (default ``{question}``: ``llava/eval/model_vqa.py:44`` sends the question text as
is, haotian-liu/LLaVA@c121f04), ``max_new_tokens`` (official 1024, model_vqa.py:71).
"""

from __future__ import annotations

from .base import SINGLE_SPLIT, Benchmark, Column
from .judged import SCORE_KEYS, judge_config, workers


def _splits(cfg):
    return [SINGLE_SPLIT]


def _decode_inputs(bench):
    return {"root": bench["root"]}


def _score_inputs(bench):
    return {"root": bench["root"]}


def _load_items(bench):
    from ..metrics import llavabench
    from ..runner import seeded_subset

    return seeded_subset(
        llavabench.load_items(bench["root"]), bench.get("n_items"), label="llavabench-subset"
    )


def _score(bench, records):
    from ..metrics import llavabench

    judge = judge_config(bench, why="LLaVA-Bench (in the wild)")
    parser = bench.get("parser") or "official"
    judged = llavabench.judge_items(
        records, llavabench.load_items(bench["root"]), judge, workers=workers(bench)
    )
    return llavabench.score(judged, None, parser), llavabench.score_items(judged, None, parser)


BENCHMARK = Benchmark(
    answers="open",
    kind="llavabench",
    title="LLaVA-Bench (in the wild)",
    splits=_splits,
    decode_inputs=_decode_inputs,
    score_inputs=_score_inputs,
    load_items=_load_items,
    score=_score,
    columns=(
        Column("relative", "Relative score", "higher"),
        Column("relative_conv", "Conv", "higher"),
        Column("relative_detail", "Detail", "higher"),
        Column("relative_complex", "Complex", "higher"),
        Column("model_score", "Model score (×10)", "higher"),
    ),
    note="Relative score = judge's mean score of the answer / of the GPT-4 reference, in %. "
    "Judged numbers: the judge model is named beside the table; a number from another "
    "judge than the paper's (gpt-4-0314) is not the paper's number.",
    parsers=("official", "lmms"),
    extra={
        "score_keys": SCORE_KEYS,
        "judged": "always",
        "max_new_tokens": 1024,
    },  # llava/eval/model_vqa.py:71
)
