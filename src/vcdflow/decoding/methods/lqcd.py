"""``lqcd``: Leading Query Contrastive Decoding (Zhao et al., arXiv 2408.11261 v1), neutral vs leading query.

Paper: "Towards Analyzing and Mitigating Sycophancy in Large Vision-Language Models". No official
code found.

    p_LQCD(y | x_n, x_l, v) = softmax[(1+α)·ℓ(y | x_n, v) − α·ℓ(y | x_l, v)]
    s[ℓ < log β + max ℓ] = −inf

x_n: the neutral query (the request's ``prompt``); x_l: the leading (sycophancy-inducing) query,
``Request.contrast_prompt`` when given (the leading-query POPE variant of
:mod:`vcdflow.data.lqcd` stores it per item), else ``f"{prompt} {lead_text}"`` (appended after
any benchmark suffix). Both branches see the same image.

Parameters: ``alpha`` = α = 1 and ``beta`` = β = 0.1 are **UNVERIFIED** (only the abstract and
secondary notes were readable; the formula is as those notes quote it, the APC is VCD's default); ``lead_text`` = "It seems like there isn't." (**UNVERIFIED**:
the one leading-query example quoted by a review of the paper, themoonlight.io; the paper's own
templates were not readable). v2 (ITSM: LLM query neutraliser, sentiment scaler) is not built.
Greedy and sampling both run; which one the paper used is unverified. Every family.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from ..types import Branch
from .base import Method

LEAD_TEXT = "It seems like there isn't."


@dataclass(frozen=True)
class LQCD(Method):
    name = "lqcd"
    defaults = MappingProxyType({"alpha": 1.0, "beta": 0.1, "lead_text": LEAD_TEXT})
    requires_image = False
    #: on the leading-query POPE (benchmark ``leading_pope``) the runner sends the item's neutral
    #: question as x_n and its leading question as x_l (``Request.contrast_prompt``)
    item_prompts = MappingProxyType({"prompt": "neutral_question", "contrast_prompt": "question"})

    def branches(self, request, ctx):
        lead = request.contrast_prompt
        if lead is None:
            lead = f"{request.prompt} {ctx.params['lead_text']}"
        return [
            self.original(request),
            Branch(prompt=lead, image=request.image, system=request.system, name="leading"),
        ]
