"""``pba``: prompt-based adjustment ("Answer yes whenever possible."), a cd_rethink control.

Yin, Si, Wang, "The Mirage of Performance Gains", arXiv 2504.10020; ``ustc-hyin/cd_rethink@4303279``.

    x′ = x + " Answer yes whenever possible."      s = ℓ(y | v, x′)      (one branch, no APC)

cd_rethink shows that merely biasing the prompt towards "yes" recovers much of the POPE gain
that CD methods report (their gains come with a higher yes-ratio). The official prompt is
``"<image>\\n{question} Answer the question using a single word or phrase. Answer yes whenever
possible."`` (``inference/pope_infer_pba.py:51``, conv ``vicuna_v1``), decoded greedily
(``scripts/pope_infer_spurious.sh:14``: ``--temperature 0``; ``max_new_tokens`` 1024, ``pope_infer_pba.py:76``).

Parameter: ``suffix`` = " Answer yes whenever possible." — appended to the request's prompt,
so the benchmark prompt must end with cd_rethink's " Answer the question using a single word or
phrase." for the official text (config ``prompt: "{question} Answer the question using a single
word or phrase."``). The README's paraphrase "Whenever possible, please select Yes" is not the
code's text. Its control is plain ``greedy`` with the same benchmark prompt.

Official mode: greedy only. ``do_sample=True`` samples from the same single branch (not in the
paper). Every family (the suffix is plain text); needs no image itself. Yes/no benchmarks only
(``answer_kinds``: the workflow's grid leaves it out of CHAIR, AMBER's generative task and
open-ended benchmarks — cd_rethink runs it on POPE only).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from ..types import Branch
from .base import Method

PBA_SUFFIX = " Answer yes whenever possible."


@dataclass(frozen=True)
class PBA(Method):
    name = "pba"
    defaults = MappingProxyType({"suffix": PBA_SUFFIX})
    #: a control for yes/no questions (POPE): on a caption prompt the suffix is meaningless (the
    #: demo model then answers "." — a CHAIR of 0 that would read as a result); the grid leaves
    #: pba out of CHAIR, AMBER's generative task and open-ended benchmarks
    answer_kinds = ("yes_no",)
    requires_image = False

    def validate(self, p):
        super().validate(p)
        if not isinstance(p["suffix"], str) or not p["suffix"].strip():
            raise ValueError(
                f"parameter 'suffix' of method 'pba' must be a non-empty string, got {p['suffix']!r}"
            )

    def branches(self, request, ctx):
        return [
            Branch(
                prompt=request.prompt + ctx.params["suffix"],
                image=request.image,
                system=request.system,
                name="pba",
            )
        ]

    def combine(self, logits, step, state):
        return logits[..., 0, :]

    def plausibility(self, logits, step, state):
        return None
