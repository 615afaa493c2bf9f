"""``only``: One-Layer Intervention (Wan et al., ICCV 2025, arXiv 2507.00898; ``zifuwan/ONLY``).

One forward gives both ℓ and a "textually enhanced" ℓ_TE (an in-forward side stream,
``zifuwan/ONLY@109bffe:transformers/src/transformers/models/llama/modeling_llama.py``):

1. TE-MHA at decoder layer ℓ̃ = ``layer`` (``enhance_layer_index`` = 0, ``:860``), from that layer's
   post-softmax attention A of the last query row (``:482-522``): text columns (every real column
   but the first, BOS, and the image columns) and image columns, separately, per head: entries
   above mean + std (unbiased) of those columns are zeroed (``:486-497``); renormalise the kept
   text and image weights separately, entropies H_text, H_img (with log(x + 1e-6), NaN → 0 / ∞,
   ``:501-504``), ratio r_h = H_text / H_img; heads with r_h < mean_h r_h are zeroed (``:505-518``);
   o_TE = o_proj(A_TE·V) (``:519-522``).
2. o_TE is carried to the last decoder layer: r = 0.2·h + input_layernorm(o_TE) with h that layer's
   main-stream input, h_TE = r + MLP(post_attention_layernorm(r)) (``:656-662``),
   ℓ_TE = W_lm·N_f(h_TE) (``:992-993``). The main stream is untouched.
3. Adaptive combine (``only_utils/only_sample.py``): d = Σ|softmax(ℓ) − softmax(ℓ_TE)|;
   d < γ: s = ℓ + α₁·ℓ_TE (collaborative), else s = (1+α₂)·ℓ − α₂·ℓ_TE; APC β on ℓ.

Parameters: ``alpha_pos`` = α₁ = 3 (``ritual_alpha_pos``), ``alpha_neg`` = α₂ = 1
(``ritual_alpha_neg``), ``beta`` = 0.1 (``ritual_beta``), ``gamma`` = γ = 0.2 (``js_gamma`` of the
POPE script ``eval_bench/scripts/pope_eval.sh``; CHAIR and MME scripts: 0.25, MME with β = 0.4; the
sampler's own default is 0.1 and argparse's 0.6), ``layer`` = ℓ̃ = 0, ``residual_weight`` = 0.2.
Decoding: the official sampler always samples (T = 1, top-p = 1); our greedy mode (argmax of s) is
ours. ``Output.meta["only_collaborative"]`` counts the steps that took the collaborative branch.

Divergences: the cut statistics are computed in float64, so weights tied with their cut (e.g. a
head attending uniformly: std 0) stay, as the formula says (the code's float16/32 mean can land a
rounding step below them and cut them all); positions are per row (the code hard-codes LLaVA's BOS = 0, system 1–34, image
35–610; the InstructBLIP copy image 0–31, Qwen-VL 1–256): here the first real token is the
untouched "BOS" column and the image columns are the row's image placeholders (InstructBLIP: the
Q-Former query outputs), padding excluded; the last layer is the model's own (the code: index 31);
the side stream is computed for the last query row only (the only row whose logits are used).
Families: all (the official code covers LLaVA-1.5, InstructBLIP and Qwen-VL-Chat; Qwen2.5-VL is ours).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import torch

from ..attention import SideStream
from ..types import InputError
from .base import Method


def _masked_mean_std(x: torch.Tensor, m: torch.Tensor):
    """Mean and unbiased std of ``x`` [R, H, K] over the columns ``m`` [R, 1, K]."""
    n = m.sum(-1, keepdim=True).to(x.dtype)
    mean = (x * m).sum(-1, keepdim=True) / n
    var = (((x - mean) * m) ** 2).sum(-1, keepdim=True) / (n - 1)
    return mean, var.sqrt()


class ONLYHooks(SideStream):
    def start(self, adapter, seqs, tokens):
        n = len(adapter.decoder_layers())
        idx = self.side_layer if self.side_layer >= 0 else n + self.side_layer
        if not 0 <= idx < n - 1:
            raise InputError(
                f"method 'only': layer {self.side_layer} must be below the last decoder layer "
                f"(the model has {n})"
            )
        super().start(adapter, seqs, tokens)

    def side_output(self, p, v, ctx, module):
        a = p[:, :, -1, :].double()  # [R, H, K]; float64: equal weights (std 0) are never cut
        valid, img, first = ctx.keys(a.shape[-1])
        text = (valid & ~img & ~first)[:, None, :]
        image = img[:, None, :]
        out = a.clone()
        kept = {}
        for name, m in (("text", text), ("image", image)):
            mean, std = _masked_mean_std(a, m)
            x = torch.where(m & (a > mean + std), torch.zeros_like(a), a)
            out = torch.where(m, x, out)
            w = x * m
            q = w / w.sum(-1, keepdim=True)
            kept[name] = -(torch.where(m, q * torch.log(q + 1e-6), torch.zeros_like(q))).sum(-1)  # [R, H]
        ht = torch.nan_to_num(kept["text"], nan=0.0)
        hi = torch.nan_to_num(kept["image"], nan=float("inf"))
        ratio = ht / hi
        removed = ratio < ratio.mean(-1, keepdim=True)
        out = out.masked_fill(removed[:, :, None], 0.0)
        o = torch.einsum("rhk,rhkd->rhd", out.to(v.dtype), v)  # [R, H, d]
        return module.o_proj(o.reshape(o.shape[0], -1))


@dataclass(frozen=True)
class ONLY(Method):
    name = "only"
    #: its decoder hooks read the prefill's attention mask as one tensor
    needs = ("plain_attention_mask",)
    defaults = MappingProxyType(
        {"alpha_pos": 3.0, "alpha_neg": 1.0, "beta": 0.1, "gamma": 0.2, "layer": 0, "residual_weight": 0.2}
    )

    def validate(self, p):
        super().validate(p)
        for k in ("alpha_pos", "alpha_neg", "gamma"):
            if float(p[k]) < 0:
                raise ValueError(f"parameter {k!r} of method 'only' must be >= 0, got {p[k]}")

    def branches(self, request, ctx):
        self.require_image(request)
        return [self.original(request)]

    def forward_hooks(self, adapter, params):
        return ONLYHooks(layer=int(params["layer"]), residual_weight=float(params["residual_weight"]))

    def combine(self, logits, step, state):
        p = state.params
        l0 = logits[..., 0, :]
        lte = state.hooks.side_logits[state.rows[..., 0]]
        d = (torch.softmax(l0, -1) - torch.softmax(lte, -1)).abs().sum(-1, keepdim=True)
        collab = d < float(p["gamma"])
        for k, c in enumerate(collab.flatten().tolist()):
            if c and state.contexts:
                meta = state.contexts[k].meta
                meta["only_collaborative"] = meta.get("only_collaborative", 0) + 1
        return torch.where(
            collab,
            l0 + float(p["alpha_pos"]) * lte,
            (1 + float(p["alpha_neg"])) * l0 - float(p["alpha_neg"]) * lte,
        )
