"""``contrast``: generic contrastive decoding with a caller-supplied contrast input.

    s = (1+α)·ℓ(y | v, x) − α·ℓ(y | v′, x′);   s[ℓ < log β + max ℓ] = −inf

The contrast branch uses ``Request.contrast_image`` (default: the original image) and
``Request.contrast_prompt`` (default: the original prompt); at least one must be given. The system
message is shared. In the workflow a benchmark item carries them (``item_contrast``): POPE
question-file keys ``contrast_question`` (through the benchmark's prompt template like the question)
and ``contrast_image`` (a file name under the benchmark's ``images``, preprocessed like the image);
the record's ``meta.contrast_input`` keeps the item's values; an item with neither key is an error
row naming them (``tests/test_workflow_contrast.py``). Parameters: ``alpha`` = α = 1, ``beta`` = β = 0.1 (VCD paper / ``DAMO-NLP-SG/VCD`` sampler).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from ..types import Branch, InputError
from .base import Method


@dataclass(frozen=True)
class Contrast(Method):
    name = "contrast"
    defaults = MappingProxyType({"alpha": 1.0, "beta": 0.1})
    requires_image = False
    #: Request field -> benchmark item key the workflow's runner fills it from (``vcdflow.runner.
    #: decode_batch``): the item's ``contrast_question`` through the benchmark's prompt template,
    #: its ``contrast_image`` (a file name resolved like ``image``: ``contrast_image_path``) loaded
    #: and preprocessed like the item's image; an item with neither is an error row naming them
    item_contrast = MappingProxyType(
        {"contrast_prompt": "contrast_question", "contrast_image": "contrast_image"}
    )

    def branches(self, request, ctx):
        if request.contrast_image is None and request.contrast_prompt is None:
            raise InputError("method 'contrast' needs Request.contrast_image and/or Request.contrast_prompt")
        image = request.contrast_image if request.contrast_image is not None else request.image
        prompt = request.contrast_prompt if request.contrast_prompt is not None else request.prompt
        return [
            self.original(request),
            Branch(prompt=prompt, image=image, system=request.system, name="contrast"),
        ]
