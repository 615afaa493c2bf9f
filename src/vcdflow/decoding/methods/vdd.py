"""``vdd``: visual debias decoding (Zhang et al., arXiv 2403.05262; ``yfzhang114/LLaVA-Align``).

The VCD formula with a text-only contrast (the "debias sampling" of ``--use_dd``/``--use_dd_unk``):

    s = (1+α)·ℓ(y | v, x) − α·mean_i ℓ(y | ∅_i, x);   s[ℓ < log β + max ℓ] = −inf

``variant``: ``"none"`` (``--use_dd``: image removed), ``"unk"`` (``--use_dd_unk``: the image
replaced by one ``<unk>`` token), ``"both"`` (both flags: the two contrast logits averaged).
Parameters: ``alpha`` = α = 1, ``beta`` = β = 0.1, ``variant`` = "both": the reproduction command of LLaVA-Align issue #9
(``--temperature 1.0 --use_dd --use_dd_unk --cd_alpha 1.0``); the code's own default α is 0.5.
The post-hoc calibration (``eval_pope_calibrate.py``) is a different method and not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from ..types import Branch
from .base import Method


@dataclass(frozen=True)
class VDD(Method):
    name = "vdd"
    defaults = MappingProxyType({"alpha": 1.0, "beta": 0.1, "variant": "both"})

    def validate(self, p):
        super().validate(p)
        if p["variant"] not in ("none", "unk", "both"):
            raise ValueError(
                f"parameter 'variant' of method 'vdd' must be 'none', 'unk' or 'both', got {p['variant']!r}"
            )

    def branches(self, request, ctx):
        self.require_image(request)
        out = [self.original(request)]
        if ctx.params["variant"] in ("none", "both"):
            out.append(Branch(prompt=request.prompt, image=None, system=request.system, name="no_image"))
        if ctx.params["variant"] in ("unk", "both"):
            out.append(
                Branch(
                    prompt=f"{ctx.adapter.unk_token}\n{request.prompt}",
                    image=None,
                    system=request.system,
                    name="unk_image",
                )
            )
        return out
