"""``cid``: Contrastive Input Decoding (Yona et al., arXiv 2305.07378), regular vs contrastive input.

Yona, Honovich, Laish, Aharoni. No official code found.

Text that is likely given the regular input x and unlikely given a contrastive input x′ (e.g.
"…untreated in men?" vs "…in women?"), a bias-probing tool for LMs; the strength is λ::

    s = (1+λ)·ℓ(y | v, x) − λ·ℓ(y | v′, x′);   s[ℓ < log β + max ℓ] = −inf

**UNVERIFIED**: only the abstract and digests were readable;
the per-token formula above is the VCD-style contrast with λ in place of α, the APC (β) is ours.
The contrastive input comes from the request: ``Request.contrast_prompt`` (x′) and/or
``Request.contrast_image`` (v′; default: the same image). In the workflow a benchmark item
carries it (``item_contrast``): POPE question-file keys ``contrast_question`` (x′, through the
benchmark's prompt template like the question) and ``contrast_image`` (v′, a file name under the
benchmark's ``images``, preprocessed like the image); the record's ``meta.contrast_input`` keeps
the item's values; an item with neither key is an error row naming them
(``tests/test_workflow_contrast.py``). λ = 0, or x′ = x and v′ = v, is greedy. Parameters: ``lambda`` = λ = 1
(**unverified**), ``beta`` = β = 0.1 (**ours**). The paper has no POPE/CHAIR protocol; greedy and
sampling both work (neither is "official"). Every family; text-only requests work too.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from ..types import Branch, InputError
from .base import Method, vcd_combine


@dataclass(frozen=True)
class CID(Method):
    name = "cid"
    defaults = MappingProxyType({"lambda": 1.0, "beta": 0.1})
    requires_image = False
    #: Request field -> benchmark item key the workflow's runner fills it from (``vcdflow.runner.
    #: decode_batch``): the item's ``contrast_question`` through the benchmark's prompt template,
    #: its ``contrast_image`` (a file name resolved like ``image``: ``contrast_image_path``) loaded
    #: and preprocessed like the item's image; an item with neither is an error row naming them
    item_contrast = MappingProxyType(
        {"contrast_prompt": "contrast_question", "contrast_image": "contrast_image"}
    )

    def validate(self, p):
        super().validate(p)
        if float(p["lambda"]) < 0:
            raise ValueError(f"parameter 'lambda' of method 'cid' must be >= 0, got {p['lambda']}")

    def branches(self, request, ctx):
        if request.contrast_prompt is None and request.contrast_image is None:
            raise InputError(
                "method 'cid' needs Request.contrast_prompt and/or Request.contrast_image "
                "(the contrastive input)"
            )
        image = request.contrast_image if request.contrast_image is not None else request.image
        prompt = request.contrast_prompt if request.contrast_prompt is not None else request.prompt
        return [
            self.original(request),
            Branch(prompt=prompt, image=image, system=request.system, name="contrastive_input"),
        ]

    def combine(self, logits, step, state):
        return vcd_combine(logits, float(state.params["lambda"]))
