"""``iava``: Instruction-Aligned Visual Attention (unverified constants), irrelevant image tokens contrasted.

Li et al., arXiv 2503.18556; ``Lee-lab558/IAVA``: "code will be released soon", the one uploaded
``IAVA.zip`` was deleted again — no code is retrievable.

What the paper's abstract and digests say: run the model on the same image with a general
instruction G ("Describe the content of the image") and with the actual query Q; image tokens
whose attention is high under G but falls under Q are *irrelevant* to the query; contrast the
logits from the original image tokens with those from the irrelevant tokens. Built here as
(every constant below is **UNVERIFIED**, our documented guess)::

    a_G, a_Q = prefill attention of the last position over the image tokens, heads and the
               chosen layers averaged (``layers``: None = all), each normalised to sum 1
    Δ = a_G − a_Q;   irrelevant = {i : Δ_i ≥ μ(Δ) + λ·σ(Δ)}     (σ unbiased, as AvisC)
    contrast input: the image with every other token's projected feature zeroed
    s = (1+α)·ℓ − α·ℓ_irrelevant;   s[ℓ < log β + max ℓ] = −inf

Parameters (all **unverified**): ``alpha`` = α = 1, ``beta`` = β = 0.1, ``lamb`` = λ = 1,
``layers`` = None, ``general_instruction`` = "Describe the content of the image" (the paper's G,
quoted by the digests). Two attention probes (one extra prefill each, eager attention) in the
batched ``prepare``. ``Output.meta``: ``iava_irrelevant_tokens`` (count) and, on InstructBLIP,
``iava_approximate`` = True: its 32 query tokens come from the Q-Former reading the instruction,
so "the same image token" differs between G and Q — positions are compared anyway.
Greedy and sampling both run (which the paper used is unverified). All three families.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import torch

from ..types import Branch
from .base import Method

GENERAL_INSTRUCTION = "Describe the content of the image"


def irrelevant_mask(att_g: torch.Tensor, att_q: torch.Tensor, layers, lamb: float) -> torch.Tensor:
    """[n_layers, n_image_tokens] attentions under G and Q → float mask of irrelevant tokens."""
    if layers is not None:
        idx = list(layers)
        bad = [i for i in idx if not 0 <= int(i) < att_g.shape[0]]
        if bad:
            raise ValueError(f"layers {bad} out of range: the model has {att_g.shape[0]} layers")
        att_g, att_q = att_g[idx], att_q[idx]
    g, q = att_g.float().mean(0), att_q.float().mean(0)
    g, q = g / g.sum(), q / q.sum()
    d = g - q
    thr = d.mean() + lamb * d.std()
    return (d >= thr).float()


@dataclass(frozen=True)
class IAVA(Method):
    name = "iava"
    defaults = MappingProxyType(
        {"alpha": 1.0, "beta": 0.1, "lamb": 1.0, "layers": None, "general_instruction": GENERAL_INSTRUCTION}
    )
    nullable = frozenset({"layers"})
    param_types = MappingProxyType({"layers": (list, tuple)})

    def validate(self, p):
        super().validate(p)
        if p["layers"] is not None and (
            not isinstance(p["layers"], (list, tuple))
            or not p["layers"]
            or not all(isinstance(i, int) for i in p["layers"])
        ):
            raise ValueError(
                f"parameter 'layers' of method 'iava' must be null or a non-empty list of "
                f"layer indices, got {p['layers']!r}"
            )

    def prepare(self, items, runner):
        ok = self.usable(items, runner.adapter)
        if not ok:
            return
        probes = []
        for it in ok:
            r = it.request
            probes += [
                Branch(prompt=it.ctx.params["general_instruction"], image=r.image, system=r.system),
                self.original(r),
            ]
        atts = runner.image_attention(probes)
        approx = getattr(runner.adapter, "family", None) == "instructblip"
        for k, it in enumerate(ok):
            ag, aq = atts[2 * k], atts[2 * k + 1]
            bad = ag if isinstance(ag, Exception) else aq if isinstance(aq, Exception) else None
            if bad is not None:
                it.fail(f"IAVA attention probe failed: {bad}")
                continue
            if ag.shape != aq.shape:
                it.fail(
                    f"IAVA: the general-instruction and query probes see {ag.shape[-1]} and "
                    f"{aq.shape[-1]} image tokens"
                )
                continue
            try:
                mask = irrelevant_mask(ag, aq, it.ctx.params["layers"], float(it.ctx.params["lamb"]))
            except ValueError as e:
                it.fail(f"method 'iava': {e}")
                continue
            it.ctx.prepared["irrelevant"] = mask
            it.ctx.meta["iava_irrelevant_tokens"] = int(mask.sum())
            if approx:
                it.ctx.meta["iava_approximate"] = True

    def branches(self, request, ctx):
        self.require_image(request)
        return [
            self.original(request),
            Branch(
                prompt=request.prompt,
                image=request.image,
                system=request.system,
                image_token_scale=ctx.prepared["irrelevant"],
                name="irrelevant",
            ),
        ]
