"""``ritual``: RITUAL (Woo et al., arXiv 2405.17821; ``sangminwoo/RITUAL``).

An **additive**, complementary combination with a randomly transformed copy of the image:

    s = ℓ(y | v, x) + α·ℓ(y | T(v), x);   s[ℓ < log β + max ℓ] = −inf

T is drawn uniformly once per sample (not per token) from the official menu (torchvision v2 in
``eval_bench/pope_eval_llava.py``; reimplemented with PIL/torch in
:mod:`vcdflow.decoding.distortions`): horizontal flip, vertical flip, rotation(180), colour
jitter(1, 1, 1, 0.5), Gaussian blur(13, σ 1.5–2.0), random resized crop(336); applied to the raw
image before the processor. Parameters: ``alpha`` = α = ``ritual_alpha_pos`` = 3, ``beta`` = β =
``ritual_beta`` = 0.1, ``crop_size`` = 336 (the crop's output size).
``transform`` fixes T (one of the menu names) instead of drawing it.
``draw`` = ``"per_question"`` (default: T and its random parameters drawn per sample, as the
official loop does) or ``"per_image"`` (drawn from a stream seeded by (seed, image content): every
question about one image gets the same transformed image, whose prefill is then shared).
RITUAL+ (the model picks T) is described in the README but not released, so not implemented.
``Output.meta["ritual_transform"]`` records T.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import torch

from ..distortions import RITUAL_TRANSFORMS, ritual_transform
from ..types import Branch
from .base import Method
from .vcd import check_draw


@dataclass(frozen=True)
class Ritual(Method):
    name = "ritual"
    random_draw = True  # the random transform
    defaults = MappingProxyType(
        {"alpha": 3.0, "beta": 0.1, "transform": None, "crop_size": 336, "draw": "per_question"}
    )
    nullable = frozenset({"transform"})

    def validate(self, p):
        super().validate(p)
        check_draw(self.name, p)
        if p["transform"] is not None and p["transform"] not in RITUAL_TRANSFORMS:
            raise ValueError(
                f"parameter 'transform' of method 'ritual' must be one of "
                f"{', '.join(RITUAL_TRANSFORMS)} or None, got {p['transform']!r}"
            )

    def branches(self, request, ctx):
        self.require_image(request)
        name = ctx.params["transform"]
        if name is None:  # uniform draw from the request's own generator
            name = RITUAL_TRANSFORMS[int(torch.randint(len(RITUAL_TRANSFORMS), (1,), generator=ctx.rng))]
        ctx.meta["ritual_transform"] = name
        img = ritual_transform(request.image, name, ctx.rng, crop_size=int(ctx.params["crop_size"]))
        return [
            self.original(request),
            Branch(prompt=request.prompt, image=img, system=request.system, name="transformed"),
        ]

    def combine(self, logits, step, state):
        if logits.shape[-2] == 1:
            return logits[..., 0, :]
        return logits[..., 0, :] + state.params["alpha"] * logits[..., 1, :]
