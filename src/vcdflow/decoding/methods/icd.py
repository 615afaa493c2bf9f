"""``icd``: Instruction Contrastive Decoding (Wang et al., Findings ACL 2024, arXiv 2403.18715;
``p1k0pan/ICD``).

    s = (1+α)·ℓ(y | v, x) − α·ℓ(y | v, x_d, x);   APC β on the original branch

The contrast branch carries the disturbance instruction x_d; ``position`` says where it goes:

- ``"system"`` (default, every family): the conversation's **system prompt** is replaced by it
  — the official LLaVA code (``conv_templates["llava_custom"].system = preprompt``,
  ``icd_utils/icd_sample_llava.py``). On InstructBLIP (no chat template) the system text is
  prepended to the prompt, which then reaches both the LLM and the Q-Former.
- ``"prefix"``: prepended to the user prompt (``"{x_d} {prompt}"``), same for every family.
- ``"qformer"`` (InstructBLIP only): the official InstructBLIP code's ``normal.json`` run — the
  LLM text is left unchanged and only the **Q-Former instruction** of the contrast branch is the
  disturbance alone (``preprompt_cd = preprompt`` → ``text_Qformer_cd`` in
  ``experiments/lavis/models/blip2_models/blip2_vicuna_instruct.py``).
- ``"qformer_question"`` (InstructBLIP only): the ``question.json`` run — the Q-Former reads the
  disturbance followed by the question. Official: ``txt_processors["eval"](preprompt + text)``
  (LAVIS lower-cases and drops punctuation, so "…image.Is there…" becomes "…image is there…");
  here ``f"{x_d} {prompt}"`` is given to the Q-Former tokenizer as is, unless
  ``qformer_text="blip_caption"``: then the Q-Former reads ``blip_pre_caption(x_d + prompt)``
  (``qformer_question``) / ``blip_pre_caption(x_d)`` (``qformer``), exactly as the official
  scripts (``txt_processors["eval"]``, ``experiments/gen_scripts/icd_ib_pope.py:46-47``).
  The official scripts write both files for every disturbance; which one the paper's tables use
  is not stated. Use one of these two to reproduce InstructBLIP numbers.

Parameters: ``alpha`` = α = 1, ``beta`` = β = 0.1, ``position`` = "system", ``qformer_text`` = "raw"
("blip_caption": LAVIS's caption processing of the Q-Former text, the ``icd`` paper protocol),
``instruction`` = "You are a confused objects detector to provide a fuzzy
overview or impression of the image." (one of the five disturbances swept by
``gen_scripts/icd_*_pope.py``). Sampling in the paper (T = 1, top-p = 1).
The paper evaluates MiniGPT-4 and InstructBLIP, not LLaVA.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from ...textproc import DISTURBANCE, blip_pre_caption  # noqa: F401 (torch-free home, re-exported)
from ..types import Branch
from .base import Method

POSITIONS = ("system", "prefix", "qformer", "qformer_question")
QFORMER_TEXT = ("raw", "blip_caption")


@dataclass(frozen=True)
class ICD(Method):
    name = "icd"
    defaults = MappingProxyType(
        {"alpha": 1.0, "beta": 0.1, "instruction": DISTURBANCE, "position": "system", "qformer_text": "raw"}
    )

    def validate(self, p):
        super().validate(p)
        if p["position"] not in POSITIONS:
            raise ValueError(
                f"parameter 'position' of method 'icd' must be one of {', '.join(POSITIONS)}, "
                f"got {p['position']!r}"
            )
        if p["qformer_text"] not in QFORMER_TEXT:
            raise ValueError(
                f"parameter 'qformer_text' of method 'icd' must be one of {', '.join(QFORMER_TEXT)}, "
                f"got {p['qformer_text']!r}"
            )

    def branches(self, request, ctx):
        self.require_image(request)
        instr, pos = ctx.params["instruction"], ctx.params["position"]
        if pos == "system":
            contrast = Branch(prompt=request.prompt, image=request.image, system=instr, name="disturbed")
        elif pos == "prefix":
            contrast = Branch(
                prompt=f"{instr} {request.prompt}",
                image=request.image,
                system=request.system,
                name="disturbed",
            )
        else:
            family = getattr(ctx.adapter, "family", None)
            if family != "instructblip":
                raise ValueError(
                    f"method 'icd' with position={pos!r} needs a model with a Q-Former "
                    f"(family instructblip), not {family!r}"
                )
            if (
                ctx.params["qformer_text"] == "blip_caption"
            ):  # official: txt_processors["eval"](preprompt + text)
                qprompt = blip_pre_caption(instr if pos == "qformer" else instr + request.prompt)
            else:
                qprompt = instr if pos == "qformer" else f"{instr} {request.prompt}"
            contrast = Branch(
                prompt=request.prompt,
                image=request.image,
                system=request.system,
                name="disturbed",
                qformer_prompt=qprompt,
            )
        return [self.original(request), contrast]
