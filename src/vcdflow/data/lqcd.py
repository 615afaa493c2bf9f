"""The leading-query POPE variant for LQCD (Zhao et al., arXiv 2408.11261 v1), built from any
POPE question file.

Every question gets a leading (sycophancy-inducing) cue appended; the neutral question is kept::

    {"question_id", "image", "label", "text": "<question> <cue>", "neutral_text": "<question>",
     "lead": "yes" | "no"}

``direction``: ``"against"`` (default: the cue suggests the wrong answer — "no" for a "yes"
label and vice versa, the sycophancy setting of the paper's curated leading queries), ``"yes"``
or ``"no"`` (the same cue for every item). Cues (``CUES``): "It seems like there is." /
"It seems like there isn't." — **UNVERIFIED**: the paper's own templates were not readable (only
its abstract); "It seems like there isn't" is the example a
review of the paper quotes (themoonlight.io), its "yes" counterpart is ours.

On this file the ``lqcd`` method decodes ``neutral_text`` as its prompt x_n with ``text`` as
the contrast x_l (``Request.contrast_prompt``); plain methods decode ``text`` (the leading query).
On plain POPE, ``lqcd`` builds x_l itself from its ``lead_text`` parameter.

Library use::

    from vcdflow.data.lqcd import build_leading_pope
    build_leading_pope("coco_pope_random.json", "coco_pope_random_leading.json")   # → n questions

Command line: ``python -m vcdflow.data.lqcd SRC DEST [--direction against|yes|no]``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

CUES = {"yes": "It seems like there is.", "no": "It seems like there isn't."}
DIRECTIONS = ("against", "yes", "no")


def leading_records(
    records: Iterable[Mapping], direction: str = "against", cues: Mapping[str, str] = CUES
) -> list[dict]:
    """POPE records → their leading-query variants (see the module docstring)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    out = []
    for k, rec in enumerate(records):
        label = rec.get("label")
        if label not in ("yes", "no"):
            raise ValueError(
                f"POPE record {k} ({rec.get('question_id', '?')}): label must be 'yes' or 'no', got {label!r}"
            )
        lead = ("no" if label == "yes" else "yes") if direction == "against" else direction
        q = str(rec["text"])
        out.append({**rec, "text": f"{q} {cues[lead]}", "neutral_text": q, "lead": lead})
    return out


def build_leading_pope(src: str | os.PathLike, dest: str | os.PathLike, direction: str = "against") -> int:
    """Read the POPE file ``src`` (JSON lines or array, validated by
    :func:`vcdflow.metrics.pope.read_pope_file`), write its leading variant to ``dest`` as JSON
    lines (atomically); returns the number of questions."""
    from ..io import write_jsonl
    from ..metrics.pope import read_pope_file

    recs = leading_records(read_pope_file(src), direction)
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(dest, recs)
    return len(recs)


def cli(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m vcdflow.data.lqcd",
        description="Build LQCD's leading-query variant of a POPE question file.",
    )
    ap.add_argument("src")
    ap.add_argument("dest")
    ap.add_argument("--direction", choices=DIRECTIONS, default="against")
    a = ap.parse_args(argv)
    n = build_leading_pope(a.src, a.dest, a.direction)
    print(f"{n} leading questions -> {a.dest}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(cli())
