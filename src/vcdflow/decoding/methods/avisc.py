"""``avisc``: Attentional Vision Calibration (Woo et al., arXiv 2405.17820; ``sangminwoo/AvisC``).

Computed once, from the original branch's prefill attentions (last query position, heads
averaged; ``avisc_utils/avisc_sample.py``):

1. per layer l, its image-attention share a_l = Σ_{image tokens} attn_l / Σ_l Σ_{image tokens}
   attn_l; keep the fewest layers whose sorted shares sum to ``layer_gamma`` (P = 0.5; the repo's
   ``count_top_p``: k = #{cumsum < P} + 1, then top-k layers);
2. average those layers' attention over the image tokens → a per-image-token score w;
3. "blind" tokens are those with w ≥ μ(w) + λ·σ(w) (λ = ``lamb`` = 1, σ the unbiased std);
   every other image token is zeroed (``masking_scheme="zeros"``: the projected image embedding
   set to 0), so the contrast input keeps **only** the blind tokens;
4. s = (1+α)·ℓ − α·ℓ_blind;  s[ℓ < log β + max ℓ] = −inf.

Parameters: ``alpha`` = α = 2.5 (the paper's LLaVA value, quoted in AvisC issue #12 and
``amber_eval.sh``; InstructBLIP: 3), ``beta`` = β = 0.1, ``layer_gamma`` = 0.5, ``lamb`` = 1.0
(``pope_eval_batch.sh``; the argparse default of ``pope_eval_llavab.py`` is 0.99),
``masking_scheme`` = "zeros". Only the ``zeros`` masking scheme is implemented (the
repo's default; "ones"/"noise" are unused options). The attention probe is one extra prefill of
the original branch with eager attention. ``Output.meta`` records ``avisc_layers`` and
``avisc_blind_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import torch

from ..types import Branch
from .base import Method


def blind_token_keep(att: torch.Tensor, layer_gamma: float, lamb: float) -> tuple[torch.Tensor, list[int]]:
    """``att`` [n_layers, n_image_tokens] (last-token attention, heads averaged) → (keep mask
    [n_image_tokens] float, selected layers)."""
    att = att.float()
    share = att.sum(-1)
    share = share / share.sum()
    sorted_share = torch.sort(share, descending=True).values
    k = int((torch.cumsum(sorted_share, 0) < layer_gamma).sum()) + 1
    k = min(k, att.shape[0])
    layers = torch.topk(share, k).indices
    w = att[layers].mean(0)
    thr = w.mean() + w.std() * lamb
    keep = (w >= thr).float()
    return keep, sorted(int(i) for i in layers)


@dataclass(frozen=True)
class AvisC(Method):
    name = "avisc"
    defaults = MappingProxyType(
        {"alpha": 2.5, "beta": 0.1, "layer_gamma": 0.5, "lamb": 1.0, "masking_scheme": "zeros"}
    )

    def validate(self, p):
        super().validate(p)
        if p["masking_scheme"] != "zeros":
            raise ValueError(
                f"parameter 'masking_scheme' of method 'avisc' supports only 'zeros', "
                f"got {p['masking_scheme']!r}"
            )
        if not 0 < float(p["layer_gamma"]) <= 1:
            raise ValueError(
                f"parameter 'layer_gamma' of method 'avisc' must be in (0, 1], got {p['layer_gamma']}"
            )

    def prepare(self, items, runner):
        ok = self.usable(items, runner.adapter)
        if not ok:
            return
        atts = runner.image_attention([self.original(it.request) for it in ok])
        for it, att in zip(ok, atts):
            if isinstance(att, Exception):
                it.fail(f"AvisC attention probe failed: {att}")
                continue
            keep, layers = blind_token_keep(
                att, float(it.ctx.params["layer_gamma"]), float(it.ctx.params["lamb"])
            )
            it.ctx.prepared["keep"] = keep
            it.ctx.meta["avisc_layers"] = layers
            it.ctx.meta["avisc_blind_tokens"] = int(keep.sum())

    def branches(self, request, ctx):
        self.require_image(request)
        return [
            self.original(request),
            Branch(
                prompt=request.prompt,
                image=request.image,
                system=request.system,
                image_token_scale=ctx.prepared["keep"],
                name="blind",
            ),
        ]
