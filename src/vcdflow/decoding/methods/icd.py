"""``icd``: Instruction Contrastive Decoding (Wang et al., Findings ACL 2024, arXiv 2403.18715;
``p1k0pan/ICD``).

    s = (1+α)·ℓ(y | v, x) − α·ℓ(y | v, x_d, x);   APC β on the original branch

The contrast branch carries the disturbance instruction x_d. For LLaVA the official code replaces
the conversation's **system prompt** with it (``conv_templates["llava_custom"].system =
preprompt``, ``icd_utils/icd_sample_llava.py``) — our default ``position="system"``. For
InstructBLIP the disturbance goes into the Q-Former instruction as preprompt + question
(``question.json``); ``position="prefix"`` prepends it to the user prompt instead (our
InstructBLIP adapter also feeds a system text to the Q-Former).

Parameters: ``alpha`` = α = 1, ``beta`` = β = 0.1, ``position`` = "system",
``instruction`` = "You are a confused objects detector to provide a fuzzy
overview or impression of the image." (the disturbance of ``gen_scripts/icd_*_pope.py``).
The paper evaluates MiniGPT-4 and InstructBLIP, not LLaVA.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from ..types import Branch
from .base import Method

DISTURBANCE = "You are a confused objects detector to provide a fuzzy overview or impression of the image."


@dataclass(frozen=True)
class ICD(Method):
    name = "icd"
    defaults = MappingProxyType({"alpha": 1.0, "beta": 0.1, "instruction": DISTURBANCE,
                                 "position": "system"})

    def validate(self, p):
        super().validate(p)
        if p["position"] not in ("system", "prefix"):
            raise ValueError(f"parameter 'position' of method 'icd' must be 'system' or 'prefix', "
                             f"got {p['position']!r}")

    def branches(self, request, ctx):
        self.require_image(request)
        instr = ctx.params["instruction"]
        if ctx.params["position"] == "system":
            contrast = Branch(prompt=request.prompt, image=request.image, system=instr, name="disturbed")
        else:
            contrast = Branch(prompt=f"{instr} {request.prompt}", image=request.image,
                              system=request.system, name="disturbed")
        return [self.original(request), contrast]
