"""``deco``: DeCo, Dynamic Correction Decoding with preceding layers (Wang et al., ICLR 2025,
arXiv 2410.11779; ``zjunlp/Deco@fee8d75``).

One branch. With ℓ the final logits and ``h_l`` the HF hidden state l (:mod:`vcdflow.decoding.layers`)::

    p_L = softmax(ℓ);  C = the top-k tokens of p_L cut after the first whose cumulative
                           probability reaches top_p (|C| ≤ k)
    p_l = softmax(W_lm · N_f(h_l))   for l in layers        (early exit WITH the final norm)
    (l*, c*) = argmax_{l, c ∈ C} p_l(c);   p* = p_{l*}(c*)
    s = ℓ + α · p* · (W_lm · N_f(h_{l*}))   on C,  −inf elsewhere
    s ← logits processors (none in the official runs), then T/top-p, pick

Sources (``transformers/generation/utils.py``): ``deco_greedy_search`` L2568-2700 (candidate set
L2660-2666: ``torch.topk`` k = ``threshold_top_k``, ``searchsorted(cumsum, threshold_top_p,
right=False)``, cutoff min(idx + 1, k); layer/token argmax L2668-2675 — flattened argmax, first
maximum in layer-major order; combination L2676-2682), ``deco_sample_search`` L3052 (same steps L3149-3174,
then ``logits_warper`` L3201 and a draw); early exits normed: ``models/llama/modeling_llama.py``
L819-824 (``self.model.norm(outputs.hidden_states[l])``).

Parameters (``chair_llava.py`` L171-175, README L61-64): ``alpha`` = α = 0.6 (README table
example: 0.5), ``threshold_top_p`` = 0.9, ``threshold_top_k`` = 20, ``layers`` = None = the
code's ``range(20, 29)`` (``--start_layer 20 --end_layer 29``) for a 32-layer model (LLaVA-1.5-7B,
InstructBLIP-Vicuna-7B); for another depth L the same fraction, floor(20·L/32) … ceil(28·L/32)
(capped at L − 1): **ours** — the README says only "the candidate layer interval can be adjusted
according to the model" (Qwen2.5-VL-7B, 28 layers → 17…25; the paper's InstructBLIP/Qwen ranges
are UNVERIFIED). A list gives explicit HF indices (< L). ``repetition_penalty`` = 1.0 and
``no_repeat_ngram_size`` = 0 (no official DeCo run passes either). Greedy (CHAIR: ``chair_llava.py``
``--temperature -1`` ⇒ ``do_sample=False``, 512 tokens) and sampling (AMBER/MME scripts: T = 1,
top-p 0.9) are both official.

Divergence: the official code assumes batch size 1 (``squeeze(0)``, a scalar p*); here the
candidate set, (l*, c*) and p* are per row. The final logits are the engine's (the code re-derives
them from ``hidden_states[32]``, hard-coded 32, which is the same tensor). ``Output.meta``:
``deco_layers`` = {layer: times chosen}. Every family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

import torch

from ..layers import HiddenStates, early_exit, n_layers
from ..processors import check_processor_params
from .base import Method


def default_layers(L: int) -> list[int]:
    """range(20, 29) for L = 32; floor(20L/32) … ceil(28L/32) (capped at L − 1) otherwise."""
    lo, hi = math.floor(20 * L / 32), min(math.ceil(28 * L / 32), L - 1)
    return list(range(max(0, min(lo, hi)), hi + 1))


def candidate_set(logits: torch.Tensor, top_k: int, top_p: float) -> list[torch.Tensor]:
    """Per row of ``logits`` [G, V]: DeCo's candidate ids (top-k cut at cumulative top_p)."""
    probs = torch.softmax(logits, -1)
    k = min(int(top_k), logits.shape[-1])
    vals, ids = torch.topk(probs, k=k, dim=-1)
    cum = vals.cumsum(-1)
    out = []
    for g in range(logits.shape[0]):
        idx = int(
            torch.searchsorted(
                cum[g].contiguous(), torch.tensor([float(top_p)], dtype=cum.dtype), right=False
            )
        )
        out.append(ids[g, : min(idx + 1, k)])
    return out


@dataclass(frozen=True)
class DeCo(Method):
    name = "deco"
    requires_image = False
    defaults = MappingProxyType(
        {
            "alpha": 0.6,
            "threshold_top_p": 0.9,
            "threshold_top_k": 20,
            "layers": None,
            "repetition_penalty": 1.0,
            "no_repeat_ngram_size": 0,
        }
    )
    nullable = frozenset({"layers"})
    param_types = MappingProxyType({"layers": (list, tuple)})

    def validate(self, p):
        super().validate(p)
        if p["layers"] is not None and (
            not p["layers"]
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in p["layers"])
        ):
            raise ValueError(
                f"parameter 'layers' of method 'deco' must be null or a non-empty list of layer "
                f"indices, got {p['layers']!r}"
            )
        if not 0 < float(p["threshold_top_p"]) <= 1:
            raise ValueError(
                f"parameter 'threshold_top_p' of method 'deco' must be in (0, 1], got {p['threshold_top_p']}"
            )
        if int(p["threshold_top_k"]) < 1:
            raise ValueError(
                f"parameter 'threshold_top_k' of method 'deco' must be >= 1, got {p['threshold_top_k']}"
            )
        check_processor_params(self.name, p)

    def candidates(self, adapter, p) -> list[int]:
        L = n_layers(adapter)
        if p["layers"] is None:
            return default_layers(L)
        out = [int(i) for i in p["layers"] if int(i) < L]
        if not out:
            raise ValueError(
                f"parameter 'layers' of method 'deco': none of {list(p['layers'])} is below the "
                f"model's {L} layers"
            )
        return out

    def forward_hooks(self, adapter, params):
        return HiddenStates(layers=self.candidates(adapter, params))

    def combine(self, logits, step, state):
        ad = state.contexts[0].adapter
        p = state.params
        layers = self.candidates(ad, p)
        final = logits[:, 0].float()
        rows = state.rows[:, 0]
        early = torch.stack(
            [early_exit(ad, state.hooks.last[l].index_select(0, rows), norm=True) for l in layers], dim=1
        )  # [G, n_layers, V]
        cands = candidate_set(final, int(p["threshold_top_k"]), float(p["threshold_top_p"]))
        alpha = float(p["alpha"])
        out = torch.full_like(final, -float("inf"))
        for g, c in enumerate(cands):
            probs = torch.softmax(early[g], -1)[:, c]  # [n_layers, |C|]
            flat = int(torch.argmax(probs))
            li = flat // probs.shape[1]
            p_star = float(probs.max())
            mixed = final[g] + alpha * p_star * early[g, li]
            out[g, c] = mixed[c]
            dist = state.contexts[g].meta.setdefault("deco_layers", {})
            dist[str(layers[li])] = dist.get(str(layers[li]), 0) + 1
        return out  # the engine applies the processors (Method.processors)

    def plausibility(self, logits, step, state):
        return None
