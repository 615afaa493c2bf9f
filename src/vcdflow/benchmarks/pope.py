"""POPE (Li et al., EMNLP 2023): yes/no object-existence questions, random/popular/adversarial.

Every ``pope`` and ``pope_<dataset>`` config key (``pope_aokvqa``, ``pope_gqa``, your own
``pope_mine``) is this benchmark; scorer: :mod:`vcdflow.metrics.pope`. A question record may carry
the optional keys ``contrast_question`` / ``contrast_image`` (a file name under ``images``): the
contrastive input of ``cid`` and ``contrast`` (``Method.item_contrast``); other methods ignore them.
"""

from __future__ import annotations

from .base import Benchmark, Column


def _splits(cfg):
    return list(cfg.get("splits") or ["random", "popular", "adversarial"])


def _decode_inputs(bench):
    return {"questions": bench["questions"], "images": bench["images"]}


def _score_inputs(bench):
    return {}


#: optional question-file keys kept on the items: a contrastive input for ``cid``/``contrast``
#: (``Method.item_contrast``); ``contrast_image`` is a file name under ``images`` like ``image``
CONTRAST_KEYS = ("contrast_question", "contrast_image")


def _with_contrast(items, recs, images):
    """``items`` (file order) with each record's contrast keys; ``contrast_image_path`` resolved
    under ``images`` as ``image_path`` is (a missing file is that item's error row at decode)."""
    from pathlib import Path

    out = []
    for it, rec in zip(items, recs, strict=True):
        extra = {k: rec[k] for k in CONTRAST_KEYS if rec.get(k) is not None}
        if "contrast_image" in extra:
            extra["contrast_image_path"] = str(Path(images) / extra["contrast_image"])
        out.append({**it, **extra} if extra else it)
    return out


def _load_items(bench):
    from ..metrics import pope
    from ..runner import seeded_subset

    items = pope.load_items(bench["questions"], bench["images"], split=bench["split"])
    items = _with_contrast(items, pope.read_pope_file(bench["questions"]), bench["images"])
    return seeded_subset(items, bench.get("n_questions"), label=f"pope-subset-{bench['split']}")


def _score(bench, records):
    from ..metrics import pope

    parser = bench.get("parser") or "official"
    return pope.score(records, parser=parser), pope.score_items(records, parser=parser)


BENCHMARK = Benchmark(
    answers="yes_no",
    kind="pope",
    title="POPE",
    splits=_splits,
    decode_inputs=_decode_inputs,
    score_inputs=_score_inputs,
    load_items=_load_items,
    score=_score,
    columns=(
        Column("accuracy", "Accuracy", "higher", "accuracy", "mcnemar"),
        Column("yes_ratio", "Yes-ratio", "", "yes_ratio"),
        Column("f1", "F1", "higher", "f1"),
    ),
    note="Rates in %. The yes-ratio sits beside every accuracy: contrastive decoding can gain POPE "
    "accuracy by answering “yes” more often (cd_rethink, arXiv 2504.10020).",
    parsers=("official", "opera", "vcd", "only", "deco"),
    # grid_keys: the list of splits decides the grid, not a split's records; labels: a record's
    # label must be one of these (vcdflow.validate.check_records)
    extra={"grid_keys": ("splits",), "labels": ("yes", "no")},
)
