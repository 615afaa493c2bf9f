"""``convis``: ConVis (Park et al., AAAI 2025, arXiv 2408.13906; ``yejipark-m/ConVis``).

The contrast images are text-to-image reconstructions of the model's own captions (made offline,
see :mod:`vcdflow.t2i`) and are passed in as ``Request.contrast_images`` (n ≥ 1; the paper: 4).
Combination (``convis_greedy_search`` in the vendored transformers 4.36.2):

    s = (1+α)·ℓ(y | v, x) − α·(1/n)·Σ_i ℓ(y | v′_i, x)        (= (1/n)Σ_i[(1+α)ℓ − αℓ′_i])

APC: the repo applies it only when ``--cutoff_lambda`` is set (default None) — so ``beta=None``
(off) is our default; ``beta=0.1`` selects the paper's λ = 0.1 (masked tokens get −inf here, −1e3
in the repo; same argmax). Defaults α = 1 (the paper's CHAIR/LLaVA-Bench value; 0.1 for POPE, MME,
HallusionBench). Parameters: ``alpha`` = 1, ``beta`` = None. The repo decodes greedily.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from ..types import Branch, InputError
from .base import Method


@dataclass(frozen=True)
class ConVis(Method):
    name = "convis"
    extra_inputs = ("convis_reconstructions",)
    defaults = MappingProxyType({"alpha": 1.0, "beta": None})
    nullable = frozenset({"beta"})

    def branches(self, request, ctx):
        self.require_image(request)
        imgs = list(request.contrast_images or [])
        if not imgs:
            raise InputError("method 'convis' needs Request.contrast_images (the reconstructed images)")
        ctx.meta["convis_n_images"] = len(imgs)
        return [self.original(request)] + [
            Branch(prompt=request.prompt, image=im, system=request.system, name=f"reconstruction{i}")
            for i, im in enumerate(imgs)
        ]
