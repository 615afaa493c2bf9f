"""``dola``: DoLa, Decoding by Contrasting Layers (Chuang et al., ICLR 2024, arXiv 2309.03883;
``voidism/DoLa@805230e``; HF ``transformers-community/dola``).

One branch. With ``h_l`` the HF hidden state l (0 = embeddings; :mod:`vcdflow.decoding.layers`),
ℓ the final logits (mature layer L, normed) and C the candidate premature layers::

    q_L = softmax(ℓ),  q_l = softmax(W_lm · h_l)         (early exit WITHOUT the final norm)
    M_l = ½(q_L + q_l)
    d_l = ½[mean_V M_l(log M_l − log q_L) + mean_V M_l(log M_l − log q_l)]
    l*  = argmax_{l ∈ C} d_l                               (dynamic; "static": l* = premature)
    head = {y : log q_L(y) ≥ log(relative_top) + max log q_L}      (≥ 1 token kept)
    s   = log q_L − log q_{l*}  on head,  −inf elsewhere
    s  ← repetition penalty θ over prompt + generated ids (HF semantics), then T/top-k/top-p, pick

Sources: ``transformers-4.28.1/src/transformers/generation/utils.py`` — ``relative_top_filter``
L2456-2465, ``dola_greedy_decode`` L2467-2790 (static L2662-2672, JSD L2674-2696, contrast
L2698-2706), ``dola_sample`` L3342 (same steps L3556-3595); the early exits apply ``lm_head`` to the
un-normed ``hidden_states[l]`` (``models/llama/modeling_llama.py`` L700-704); HF's copy
``_relative_top_filter`` / ``_dola_select_contrast`` / ``_dola_decoding`` (buckets, see
:func:`vcdflow.decoding.layers.bucket`). With ``relative_top`` = 0 the official code skips the
filter and contrasts the raw logits, s = ℓ − W_lm·h_{l*} (``utils.py`` L2665/L2701: ``if
relative_top > 0.0``); so does this method.

Parameters:

* ``layers`` = ``"low"`` (default) | ``"high"`` | a list: the candidate premature layers, HF's
  buckets — start = 0 for untied embeddings (LLaVA-1.5-7B / InstructBLIP-Vicuna-7B: low = 0,2,…,14,
  high = 16,…,30; Qwen2.5-VL-7B: low = 0,…,12, high = 14,…,26). ``"low"`` = the OPERA paper's DoLa
  baseline (0,2,…,14, mature 32) and the official README's long-form setting;
  the README uses the high bucket for TruthfulQA.
* ``premature`` = None (dynamic) or a layer index: DoLa-static (``dola_greedy_decode``'s
  ``base_layer``; the eval scripts' two-layer ``--early-exit-layers``, e.g. ``gsm8k_eval.py:286-293``).
* ``relative_top`` = 0.1 (``gsm8k_eval.py:241``, ``tfqa_eval.py:142``; HF fixes 0.1).
* ``repetition_penalty`` = θ = **1.2**: every official DoLa generation run sets it for the DoLa
  modes when not given (``gsm8k_eval.py:292-302``, ``tfqa_eval.py:189-199``, ``strqa_eval.py:
  255-265``, ``gpt4_judge_eval.py:79-89``; 1.0 only for the baseline mode); HF warns below 1.2.
  The LVLM harnesses differ: HALC's ``caption_generation.py`` runs no repetition penalty for
  LLaVA-1.5 (set 1.0 to reproduce it), while on InstructBLIP LAVIS's ``generate`` default θ = 1.5
  applies over one BOS and the generated ids (``repetition_context: generated``; protocols ``dola``
  and ``halc``). ``no_repeat_ngram_size`` = 0 (HF processor, off). ``repetition_context`` =
  ``"prompt"`` (the processors see the prompt and the generated ids; :mod:`vcdflow.decoding.processors`).
  The engine applies the processors after the contrast (greedy, sampling) or to each beam's
  log-probs (``dola_beam_search``, 4.36.2 ``utils.py`` L6937-6942 in HALC's copy).
* Greedy (``dola_greedy_decode``) and sampling (``dola_sample``: processors, then warpers) are
  both official.

Divergences: (a) **the premature layer is chosen per row**: both official implementations
average d_l over the batch before the argmax (``utils.py`` L2693-2695 "Reduce the batchmean"), so in a
batch every row shares one l*; here each request gets its own (= their batch-1 behaviour); (b)
outside the head the official code sets the premature log-probs to −1e3 for row 0 only
(``base_logits[0][mask] = -1e3``); irrelevant, the score is −inf there. (c) HALC's DoLa baseline
(``dola_beam_search``, beam 3, relative-top filter commented out: raw ℓ − W_lm·h_{l*}, then
log-softmax into the beam scores) is ``relative_top: 0`` under ``generate(num_beams=3)`` —
except that HALC averages the layer choice over the beams, here each beam chooses its own; this
combination runs but is not compared with a beam reference here. ``Output.meta``:
``dola_premature`` = {layer: times chosen over the request's rows (beams included)} (the official
``premature_layer_dist``). Every family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F

from ..layers import HiddenStates, bucket, early_exit, n_layers, start_layer
from ..processors import check_processor_params
from .base import Method


def relative_top_filter(logits: torch.Tensor, relative_top: float) -> torch.Tensor:
    """log-softmax(ℓ) with −inf below log(relative_top) + max (at least one token kept)."""
    lp = logits.log_softmax(-1)
    top = lp.max(-1, keepdim=True).values
    thresh = torch.minimum(top, top + math.log(relative_top))
    return lp.masked_fill(lp < thresh, -float("inf"))


def jsd_layers(final: torch.Tensor, premature: torch.Tensor) -> torch.Tensor:
    """DoLa's d_l: final [G, V], premature [C, G, V] logits → [C, G] (KL(M‖·) averaged over V)."""
    m = 0.5 * (F.softmax(final, -1)[None] + F.softmax(premature, -1))
    kl1 = F.kl_div(F.log_softmax(final, -1)[None].expand_as(m), m, reduction="none").mean(-1)
    kl2 = F.kl_div(F.log_softmax(premature, -1), m, reduction="none").mean(-1)
    return 0.5 * (kl1 + kl2)


@dataclass(frozen=True)
class DoLa(Method):
    name = "dola"
    requires_image = False
    defaults = MappingProxyType(
        {
            "layers": "low",
            "premature": None,
            "relative_top": 0.1,
            "repetition_penalty": 1.2,
            "no_repeat_ngram_size": 0,
            "repetition_context": "prompt",
        }
    )
    nullable = frozenset({"premature"})
    param_types = MappingProxyType({"layers": (str, list, tuple), "premature": (int,)})

    def validate(self, p):
        super().validate(p)
        if isinstance(p["layers"], str) and p["layers"] not in ("low", "high"):
            raise ValueError(
                f"parameter 'layers' of method 'dola' must be 'low', 'high' or a list of layer "
                f"indices, got {p['layers']!r}"
            )
        if not 0 <= float(p["relative_top"]) < 1:
            raise ValueError(
                f"parameter 'relative_top' of method 'dola' must be in [0, 1), got {p['relative_top']}"
            )
        if p["premature"] is not None and int(p["premature"]) < 0:
            raise ValueError(
                f"parameter 'premature' of method 'dola' must be a layer index >= 0, got {p['premature']}"
            )
        check_processor_params(self.name, p)

    def candidates(self, adapter, p) -> list[int]:
        """The candidate premature layers (HF hidden-state indices) for this model."""
        L = n_layers(adapter)
        if p["premature"] is not None:
            if not 0 <= int(p["premature"]) < L:
                raise ValueError(
                    f"parameter 'premature' of method 'dola': layer {p['premature']} is not below "
                    f"the model's {L} layers"
                )
            return [int(p["premature"])]
        return bucket(p["layers"], L, start_layer(adapter), "layers")

    def forward_hooks(self, adapter, params):
        return HiddenStates(layers=self.candidates(adapter, params))

    def combine(self, logits, step, state):
        ad = state.contexts[0].adapter
        hooks = state.hooks
        p = state.params
        layers = self.candidates(ad, p)
        final = logits[:, 0].float()  # [G, V]
        rows = state.rows[:, 0]
        early = torch.stack(
            [early_exit(ad, hooks.last[l].index_select(0, rows)) for l in layers]
        )  # [C, G, V]
        if len(layers) == 1:
            pick = torch.zeros(final.shape[0], dtype=torch.long, device=final.device)
        else:
            pick = jsd_layers(final, early).argmax(0)  # per row, not batch-averaged
        base = early[pick, torch.arange(final.shape[0], device=final.device)]  # [G, V]
        rt = float(p["relative_top"])
        if rt > 0:
            head = relative_top_filter(final, rt)
            base = base.log_softmax(-1).masked_fill(head < -1e3, -1e3)
            scores = head - base
        else:
            scores = final - base
        for k, ctx in enumerate(state.contexts):
            dist = ctx.meta.setdefault("dola_premature", {})
            key = str(layers[int(pick[k])])
            dist[key] = dist.get(key, 0) + 1
        return scores  # the engine applies the processors (Method.processors)

    def plausibility(self, logits, step, state):
        return None
