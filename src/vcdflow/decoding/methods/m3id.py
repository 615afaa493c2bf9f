"""``m3id``: Multi-Modal Mutual-Information Decoding (Favero et al., CVPR 2024). No official code.

    γ_t = exp(−λ·t),  s = ℓ_c + ((1−γ_t)/γ_t)·(ℓ_c − ℓ_u);   s[ℓ < log β + max ℓ] = −inf

ℓ_c: logits with the image; ℓ_u: the same conversation text-only (image removed, as RITUAL/AvisC
drop the image token −200). Parameters: ``lambda`` = λ = 0.02, ``beta`` = β = 0.1,
``variant`` = "logits", ``t_start`` = None.

The two public reimplementations differ, both supported:

* ``variant="logits"`` (default; ``sangminwoo/RITUAL:ritual_utils/ritual_sample.py``): raw
  logits, t counts from 0 (so the first token is not contrasted: γ_0 = 1);
* ``variant="logprob"`` (``sangminwoo/AvisC:avisc_utils/avisc_sample.py``, followed by MedHEval):
  ℓ_c, ℓ_u are log-softmax values, t counts from 1.

``t_start`` overrides the first t (None: 0 for logits, 1 for logprob). APC always uses the raw
original logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

import torch

from ..types import Branch
from .base import Method


@dataclass(frozen=True)
class M3ID(Method):
    name = "m3id"
    defaults = MappingProxyType({"lambda": 0.02, "beta": 0.1, "variant": "logits", "t_start": None})
    nullable = frozenset({"t_start"})

    def validate(self, p):
        super().validate(p)
        if p["variant"] not in ("logits", "logprob"):
            raise ValueError(
                f"parameter 'variant' of method 'm3id' must be 'logits' or 'logprob', got {p['variant']!r}"
            )

    def branches(self, request, ctx):
        self.require_image(request)
        return [
            self.original(request),
            Branch(prompt=request.prompt, image=None, system=request.system, name="text_only"),
        ]

    @staticmethod
    def gamma(step: int, params) -> float:
        t0 = params["t_start"]
        if t0 is None:
            t0 = 0 if params["variant"] == "logits" else 1
        return math.exp(-float(params["lambda"]) * (step + t0))

    def combine(self, logits, step, state):
        lc, lu = logits[..., 0, :], logits[..., 1, :]
        if state.params["variant"] == "logprob":
            lc, lu = torch.log_softmax(lc, dim=-1), torch.log_softmax(lu, dim=-1)
        g = self.gamma(step, state.params)
        return lc + ((1 - g) / g) * (lc - lu)
