"""``code``: COuntering DEscription contrastive decoding (Kim et al., arXiv 2406.01920;
``IVY-LVLM/CODE``).

1. The model describes the image itself, greedily (``description_prompt``: "Provide a detailed
   description of the image, covering all visible elements and their interactions, so as to
   thoroughly answer any potential questions about the image.", up to 512 new tokens as in the
   repo's ``greedy_condfig``, ``description_max_new_tokens``).
2. The contrast branch sees that description *in place of the image* (the repo swaps the image
   embeddings for the description's token embeddings, ``instead_pixel_values``; here the branch is
   text-only with the user turn ``"{description}\\n{prompt}"``; the repo's embedded description also
   starts with the tokenizer's BOS token).
3. Per token (``models/contrastive_decoding/cd_utils.py``), with p_v, p_d the softmax of the
   image and description branches:

       d_t = ½ Σ_y log₂(|p_v − p_d|^a + 1)·(p_v + p_d)       (a = ``alpha`` = cd_alpha = 0.7)
       α_t = 1 − d_t
       s   = (1 + α_t)·ℓ_v − α_t·ℓ_d
       V_head = {y : p_v(y) ≥ d_t · max p_v}  (APC with β = d_t)

Defaults: a = 0.7 (``evaluate.py``; the function's own fallback is 0.2); the repo decodes greedily.
``Output.meta["code_description"]`` records the description.
Parameters: ``alpha`` = a = 0.7, ``description_prompt``, ``description_max_new_tokens`` = 512.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import torch

from ..types import Branch
from .base import Method

DESCRIPTION_PROMPT = (
    "Provide a detailed description of the image, covering all visible elements and their "
    "interactions, so as to thoroughly answer any potential questions about the image."
)


def code_divergence(logits: torch.Tensor, a: float) -> torch.Tensor:
    """d_t [..., 1] from ``logits[..., 0, :]`` (image) and ``logits[..., 1, :]`` (description)."""
    p_v = torch.softmax(logits[..., 0, :], dim=-1)
    p_d = torch.softmax(logits[..., 1, :], dim=-1)
    return 0.5 * (torch.log2((p_v - p_d).abs() ** a + 1) * (p_v + p_d)).sum(-1, keepdim=True)


@dataclass(frozen=True)
class CODE(Method):
    name = "code"
    defaults = MappingProxyType(
        {"alpha": 0.7, "description_prompt": DESCRIPTION_PROMPT, "description_max_new_tokens": 512}
    )

    def prepare(self, items, runner):
        if not items:
            return
        p = items[0].ctx.params
        queries = [
            Branch(
                prompt=p["description_prompt"],
                image=it.request.image,
                system=it.request.system,
                name="describe",
            )
            for it in items
        ]
        texts = runner.greedy_texts(queries, int(p["description_max_new_tokens"]))
        for it, t in zip(items, texts):
            if isinstance(t, Exception):
                it.fail(f"CODE description failed: {t}")
            else:
                it.ctx.prepared["description"] = t

    def branches(self, request, ctx):
        self.require_image(request)
        desc = ctx.prepared["description"]
        ctx.meta["code_description"] = desc
        return [
            self.original(request),
            Branch(prompt=f"{desc}\n{request.prompt}", image=None, system=request.system, name="description"),
        ]

    def combine(self, logits, step, state):
        if logits.shape[-2] == 1:
            return logits[..., 0, :]
        d = code_divergence(logits, float(state.params["alpha"]))
        a_t = 1 - d
        return (1 + a_t) * logits[..., 0, :] - a_t * logits[..., 1, :]

    def plausibility(self, logits, step, state):
        return code_divergence(logits, float(state.params["alpha"]))
