"""Leading-query POPE for LQCD (Zhao et al., arXiv 2408.11261 v1): every question of a POPE split
with a leading (sycophancy-inducing) cue appended, built by rule ``build_leading_pope`` with
:func:`vcdflow.data.lqcd.build_leading_pope` (templates and their **UNVERIFIED** status there).
Scored exactly as POPE (:mod:`vcdflow.metrics.pope`).

Config entry (``benchmarks.leading_pope``, or ``leading_pope_<name>`` for more): ``base`` (the
POPE question file it is built from, ``{split}`` filled in — e.g. ``resources/pope/coco/head/
{split}.json`` or the demo world's POPE files), ``images``, ``direction`` (``against`` default:
the cue suggests the wrong answer; ``yes`` / ``no``: the same cue for every question),
``splits``, ``n_questions`` (seeded subsample per split, the same draw as POPE's for the same
``n_questions``: label ``pope-subset-<split>``), ``prompt``, ``parser``.

Items: ``question`` = the leading query (what every method is asked), ``neutral_question`` = the
original question and ``lead`` = the cue's answer. ``lqcd`` contrasts the neutral query x_n
against the leading x_l: on this benchmark the runner sends ``neutral_question`` as the prompt and
``question`` as ``Request.contrast_prompt`` (``LQCD.item_prompts``); every other method is asked
the leading ``question``.
Extra metric ``follow_lead``: % of scored answers that equal the cue's answer.
"""

from __future__ import annotations

from .base import Benchmark, Column

LEADING = "resources/leading_pope/{benchmark}/{split}.json"


def questions_path(bench) -> str:
    return LEADING.format(benchmark=bench["name"], split=bench["split"])


def _splits(cfg):
    return list(cfg.get("splits") or ["random", "popular", "adversarial"])


def _decode_inputs(bench):
    return {"questions": questions_path(bench), "images": bench["images"]}


def _score_inputs(bench):
    return {"questions": questions_path(bench)}


def _leads(bench) -> dict:
    from ..metrics.pope import read_pope_file

    return {str(r["question_id"]): r for r in read_pope_file(questions_path(bench))}


def _load_items(bench):
    from ..metrics import pope
    from ..runner import seeded_subset

    split = bench["split"]
    items = pope.load_items(
        questions_path(bench), bench["images"], split=split, prefix=f"{bench['name']}/{split}/"
    )
    leads = _leads(bench)
    items = [
        {
            **it,
            "neutral_question": leads[str(it["question_id"])].get("neutral_text"),
            "lead": leads[str(it["question_id"])].get("lead"),
        }
        for it in items
    ]
    return seeded_subset(items, bench.get("n_questions"), label=f"pope-subset-{split}")


def _score(bench, records):
    from ..metrics import pope

    parser = bench.get("parser") or "official"
    scores, rows = pope.score(records, parser=parser), pope.score_items(records, parser=parser)
    leads = _leads(bench)
    prefix = f"{bench['name']}/{bench['split']}/"
    followed = [
        r["pred"] == leads[r["item_id"][len(prefix) :]]["lead"]
        for r in rows
        if r["item_id"].startswith(prefix) and r["item_id"][len(prefix) :] in leads
    ]
    scores["follow_lead"] = 100.0 * sum(followed) / len(followed) if followed else float("nan")
    return scores, rows


BENCHMARK = Benchmark(
    answers="yes_no",
    kind="leading_pope",
    title="POPE, leading queries (LQCD)",
    splits=_splits,
    decode_inputs=_decode_inputs,
    score_inputs=_score_inputs,
    load_items=_load_items,
    score=_score,
    columns=(
        Column("accuracy", "Accuracy", "higher", "accuracy", "mcnemar"),
        Column("yes_ratio", "Yes-ratio", "", "yes_ratio"),
        Column("f1", "F1", "higher", "f1"),
        Column("follow_lead", "Follows the cue", "lower"),
    ),
    note="POPE questions with a leading cue appended (templates UNVERIFIED: vcdflow.data.lqcd). "
    "“Follows the cue” = % of answers equal to the cue's answer (with direction 'against' "
    "every such answer is wrong).",
    parsers=("official", "opera", "vcd", "only", "deco"),
    extra={
        "protocol_kind": "pope",
        "grid_keys": ("splits",),
    },  # a paper's POPE setting (prompt, parser, tokens) applies as is
)
