"""``revisit``: ReVisiT, "Revisit What You See" — vision tokens' own early-exit distributions guide
decoding (Cho & Kim, arXiv 2506.09522; ``bscho333/ReVisiT@b382967``).

One branch, no extra forward. At prefill (:class:`~vcdflow.decoding.layers.
HiddenStates`) the hidden states of every image-token position j are kept for the chosen layers
l ∈ Λ (HF indices, :mod:`vcdflow.decoding.layers`); each gives a candidate logit vector
c_{l,j} = W_lm · h_{l,j} (no final norm, except l = L, where HF's ``hidden_states[L]`` is already
normed: N_f(h_L)). K = |Λ| · N_img candidates. Per step, with ℓ the final logits::

    log p = log_softmax(ℓ);  V = {w : log p(w) ≥ log α + max log p}     (≥ 1 token kept)
    q = softmax(ℓ[V]);  r_k = softmax(c_k[V])        (both renormalised over V)
    M_k = ½(q + r_k);  d_k = ½[mean_V M_k log(M_k/q) + mean_V M_k log(M_k/r_k)]
    k* = argmin_k d_k                                 (the vision token closest to the output)
    s = log q + log r_{k*}  on V,  −inf elsewhere;  then processors, T/top-p, pick

Sources: ``Qwen2.5-VL/data/transformers-v4.50.0/src/transformers/generation/utils.py`` —
``_revisit_decoding`` L2579-2830: layer sets L2667-2704 (``"all"`` = range(start, L + 1, 2), L
appended when L is odd; ``"last"`` = [L]; ``"low"``/``"high"`` = HF DoLa's buckets + L; a list is
filtered to l < L), candidates L2723 (``lm_head(outputs.hidden_states[i][:, image_tokens, :])``,
layer-major order), V and the JSD L2748-2763, argmin L2765, output L2766-2772; image positions
``input_ids == image_token_id`` (L2632). The LLaVA copy
(``LLaVA1.5/data/transformers-v4.31.0/…/utils.py`` L2605-2608, L2742-2767; ``revisit_decoding`` (no underscore in this copy) from L2473) is the same with the 576
positions after the image placeholder.

Parameters: ``layers`` = None = the official per-model default — ``"all"`` for Qwen2.5-VL
(``Qwen2.5-VL/eval/chair_eval_qwenvl.py:73``), ``"last"`` otherwise (``LLaVA1.5/eval/
chair_eval_llava.py:76``; InstructBLIP and the demo model: ours, as LLaVA); or ``"all"`` / ``"last"``
/ ``"low"`` / ``"high"`` / a list. ``relative_top`` = α = 1e-5 (both eval scripts, L77 / L74).
``repetition_penalty`` = 1 (``chair_eval_qwenvl.py:57``; the LLaVA script passes none),
``no_repeat_ngram_size`` = 0. Official mode: **greedy** (``eval_chair_*.sh``: ``do_sample=False``,
512 tokens, "Please describe this image in detail."); sampling (code path exists, not run) is
supported.

Divergences: the official code is batch-1 (``final_logits[0]``, ``js_divs.mean(0)`` over the
batch); here everything is per row. Precision: the official candidates come from ``lm_head`` in the
model dtype and their ``softmax`` / ``log_softmax`` run in it too (bf16 for Qwen, fp16 for LLaVA:
``Qwen2.5-VL/data/transformers-v4.50.0/src/transformers/generation/utils.py:2723,2754-2755``;
``LLaVA1.5/…/utils.py:2749-2750``), about 3 significant digits; here the candidate logits, log r_k
and the divergences are float32. Kept: the fp16/bf16 rounding only decides near-ties of k* or of
the final argmax (differences below the half-precision step), and float32 is the same computation
without that noise; not a different formula. InstructBLIP (not in the official code): its 32 Q-Former query
tokens are the "vision tokens". ``cache_mb`` = 1024 (ours, speed only): a request's full candidate
logits K × vocab (float32) are computed once, at its first step, as the official code does at
prefill, when they fit in that many MiB (LLaVA ``"last"``: 576 × 32 064 × 4 B ≈ 70 MiB);
otherwise (e.g. Qwen2.5-VL ``"all"``: 15 layers × N_img × 152 k) the prefill states H [K, D] are
kept and c_k[V] = H·W_lm[V]ᵀ is computed on V every step (exact; slower when V is large). ``Output.meta``: ``revisit_layers`` = {layer: times
its token was chosen}. Every family; needs an image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
import torch.nn.functional as F

from ..layers import HiddenStates, bucket, n_layers, start_layer
from ..processors import check_processor_params
from .base import Method

LAYER_SETS = ("all", "last", "low", "high")


def revisit_layers(spec, L: int, start: int) -> list[int]:
    """ReVisiT's layer set (HF hidden-state indices)."""
    if spec == "all":
        return list(range(start, L + 1, 2)) + ([] if L % 2 == 0 else [L])
    if spec == "last":
        return [L]
    if spec in ("low", "high"):
        return bucket(spec, L, start, "layers") + [L]
    return bucket(spec, L, start, "layers")


@dataclass
class VisionCandidates(HiddenStates):
    """Image-position state hooks plus each request's candidates (``cache[request]``), built at its first step."""

    cache: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ReVisiT(Method):
    name = "revisit"
    defaults = MappingProxyType(
        {
            "layers": None,
            "relative_top": 1e-5,
            "repetition_penalty": 1.0,
            "no_repeat_ngram_size": 0,
            "cache_mb": 1024.0,
        }
    )
    nullable = frozenset({"layers"})
    param_types = MappingProxyType({"layers": (str, list, tuple)})

    def validate(self, p):
        super().validate(p)
        if isinstance(p["layers"], str) and p["layers"] not in LAYER_SETS:
            raise ValueError(
                f"parameter 'layers' of method 'revisit' must be null, one of {', '.join(LAYER_SETS)} "
                f"or a list of layer indices, got {p['layers']!r}"
            )
        if not 0 < float(p["relative_top"]) < 1:
            raise ValueError(
                f"parameter 'relative_top' of method 'revisit' must be in (0, 1), got {p['relative_top']}"
            )
        check_processor_params(self.name, p)
        if float(p["cache_mb"]) < 0:
            raise ValueError(f"parameter 'cache_mb' of method 'revisit' must be >= 0, got {p['cache_mb']}")

    def layers_for(self, adapter, p) -> list[int]:
        spec = p["layers"]
        if spec is None:
            spec = "all" if getattr(adapter, "family", None) == "qwen2_5_vl" else "last"
        return revisit_layers(spec, n_layers(adapter), start_layer(adapter))

    def forward_hooks(self, adapter, params):
        return VisionCandidates(image_layers=self.layers_for(adapter, params))

    def candidates(self, adapter, states: torch.Tensor, layers) -> torch.Tensor:
        """[n_layers, N_img, D] prefill states → H [K, D] (layer-major), N_f on layer L only."""
        L = n_layers(adapter)
        parts = [adapter.final_norm()(states[i]) if l == L else states[i] for i, l in enumerate(layers)]
        return torch.cat(parts, dim=0)

    def _candidates_of(self, ad, state, g: int, row: int, layers):
        """Request ``state.requests[g]``'s candidates, built once per decode: the full candidate
        logits C = H·W_lm^T [K, vocab] (float32) when they fit in ``cache_mb`` (the official code
        caches them at prefill), else H [K, D] (then c_k[V] = H·W_lm[V]^T every step)."""
        hooks = state.hooks
        cache = hooks.cache
        r = state.requests[g]
        if r not in cache:
            states = hooks.image[row]
            if states is None:
                raise ValueError("method 'revisit' needs image tokens in the prompt (no image-token states)")
            H = self.candidates(ad, states, layers)
            head = ad.lm_head()
            V = head.weight.shape[0]
            full = H.shape[0] * V * 4 <= float(state.params["cache_mb"]) * 2**20
            cache[r] = (head(H).float() if full else H, full, states.shape[1])
        return cache[r]

    def combine(self, logits, step, state):
        ad = state.contexts[0].adapter
        p = state.params
        layers = self.layers_for(ad, p)
        head = ad.lm_head()
        W, bias = head.weight, getattr(head, "bias", None)
        final = logits[:, 0].float()
        out = torch.full_like(final, -float("inf"))
        log_a = math.log(float(p["relative_top"]))
        for g, row in enumerate(state.rows[:, 0].tolist()):
            cand, full, n_img = self._candidates_of(ad, state, g, row, layers)
            lp = final[g].log_softmax(-1)
            top = lp.max()
            keep = (lp >= torch.minimum(top, top + log_a)).nonzero().flatten()
            if full:
                c = cand.index_select(1, keep.to(cand.device))  # [K, |V|]
            else:
                c = (cand @ W.index_select(0, keep.to(W.device)).T).float()
                if bias is not None:
                    c = c + bias.index_select(0, keep.to(bias.device)).float()
            q_log = final[g, keep].log_softmax(-1)
            r_log = c.log_softmax(-1)
            m = 0.5 * (q_log.exp()[None] + r_log.exp())
            kl1 = F.kl_div(q_log[None].expand_as(m), m, reduction="none").mean(-1)
            kl2 = F.kl_div(r_log, m, reduction="none").mean(-1)
            k = int((0.5 * (kl1 + kl2)).argmin())
            out[g, keep] = q_log + r_log[k]
            layer = str(layers[k // n_img])
            dist = state.contexts[g].meta.setdefault("revisit_layers", {})
            dist[layer] = dist.get(layer, 0) + 1
        return out  # the engine applies the processors (Method.processors)

    def plausibility(self, logits, step, state):
        return None
