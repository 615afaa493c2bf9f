"""``pai``: Paying More Attention to Image (Liu, Zheng, Chen, ECCV 2024, arXiv 2407.21771; ``LALBJ/PAI``).

Two parts, both from the official code (``LALBJ/PAI@9bbd8bd``):

1. **Attention intervention** (``attention.py:67-95``, ``llama_modify`` ``:120-128``): in decoder
   layers ``start_layer … end_layer−1`` (all heads), for the **last query row** of a forward and
   the image keys k:

       a_k ← a_k + α·|a_k|

   on the scaled scores after the causal/padding mask is added and clamped at the dtype's minimum
   (``torch.max(attn_weights, finfo.min)``, ``:73-75``), before the softmax. Only the image branch
   gets it (``use_attn and not use_cfg``, ``attention.py:90``). **Which forwards** (``attn_schedule``):

   * ``"official"`` (default, what the README's ``--use-attn --use-cfg`` run does):
     ``llama_modify`` sets the layers' ``use_cfg = True`` before ``generate`` (``attention.py:125``,
     called with ``args.use_cfg`` before each item's ``generate``, ``pope_eval.py:113-122,134``), so the image branch's **prefill is
     not intervened** — the whole prompt, hence the **first generated token's** scores, which are
     CFG alone. ``CFGLogits.__call__`` sets ``use_cfg = True`` for its text-only forward and back to
     ``False`` after it (``CFG.py:32-33,48-49``), so every later forward of the image branch (the
     second generated token on) is intervened at its last row, the newly fed token. With γ = 1
     and CFG on, ``CFGLogits`` returns before that toggle (``CFG.py:30-31``): ``use_cfg`` stays
     True and the attention is **never** intervened (a plain greedy decode of the image branch).
     With ``use_cfg`` off (the attention-only ablation) ``use_cfg`` is False from the start and
     every forward is intervened, the prefill's last row included.
   * ``"always"``: every forward's last row, the prefill's last prompt position included, whatever
     ``use_cfg`` and γ are — the paper's description of the method (and vcdflow's behaviour before
     the official schedule was modelled).

   Under the cached decode every position from the first intervened forward's last row on carries
   the intervention in its cached states; with a shared prefix the prefix forward is left unchanged
   (its last row is not the row's last prompt position) and the suffix forward's last row is the
   prefill's last row (intervened under ``"always"`` only).
2. **Logits refine (CFG against the text-only input)** (``CFG.py:28-58``): a second stream runs the
   prompt with the image chunk removed (``model_loader.py:253-294``: BOS + text before + text after
   the image), with the intervention switched off. With log p_c, log p_u the log-softmax of the
   image and text-only branches:

       s = γ·(log p_c − log p_u) + log p_u,   s[log p_c < log 0.1 + max log p_c] = −inf

   and with γ = 1 the code returns log p_c unchanged (no cutoff, ``CFG.py:30-31``).

Parameters: ``alpha`` = α = 0.2, ``gamma`` = γ = 1.1 (README commands ``--alpha 0.2 --use-cfg
--gamma 1.1``; the scripts' argparse default is ``--gamma 2``, ``chair_eval.py:53``/``pope_eval.py:53``:
pass ``gamma: 2`` for that), ``start_layer`` = 2, ``end_layer`` = None (= the number of decoder
layers; README ``--start-layer 2 --end-layer 32`` on LLaVA-1.5-7B's 32), ``beta`` = 0.1 (the cutoff
is hard-coded, ``CFG.py:53``), ``use_attn`` / ``use_cfg`` = True (the README's ``--use-attn
--use-cfg``; off they give the ablations: CFG only / intervention only, then s = ℓ of the image
branch), ``attn_schedule`` = ``"official"`` (above; ``"always"`` for the paper's description).
The unified protocol runs the method's defaults, so it too uses the official schedule. Decoding:
the scripts decode greedily by default (``--sample`` off); the README recommends nucleus sampling;
both are supported. CHAIR prompt in the official script: "Please help me describe the image in
detail." (``chair_eval.py:94``), 512 new tokens, seed 927.

Families: the official ``ModelLoader`` supports LLaVA-1.5 (576 image tokens), MiniGPT-4 and Shikra
only (``model_loader.py:210-230``); InstructBLIP and Qwen2.5-VL run here mechanically — on
InstructBLIP the "image tokens" are the 32 Q-Former query outputs in the LLM input — and their
α/γ/layers are **UNVERIFIED** (our choice: the LLaVA values). Divergences: the image span comes
from each row's own image placeholders (the code takes one span from the first row,
``model_loader.py:121``), so batches of different prompts are exact; the text-only branch is the
family's chat template without the image part (the code splits the template string at
``<ImageHere>``: the same text up to whitespace around the removed chunk).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import torch

from ..attention import AttentionHooks
from ..types import Branch, InputError
from .base import Method


#: values of ``attn_schedule`` (see the module docstring)
SCHEDULES = ("official", "always")
#: the engine's prefill phases (unshared prefill, shared prefix, question suffixes)
PREFILL = ("prefill", "prefix", "suffix")


class PAIHooks(AttentionHooks):
    """Attention-score hook on layers [start, end): the image branch's last query row gains α·|a|
    on its image keys — in every forward (``prefill=True``) or from the first decode step on
    (``prefill=False``: the official run with CFG on)."""

    last_row_only = True

    def __init__(self, start: int, end: int | None, alpha: float, use_attn: bool, prefill: bool = True):
        super().__init__()
        self.start_layer, self.end_layer, self.alpha, self.use_attn = start, end, float(alpha), use_attn
        self.prefill = prefill

    def start(self, adapter, seqs, tokens):
        n = len(adapter.decoder_layers())
        end = n if self.end_layer is None else min(int(self.end_layer), n)
        if self.use_attn:
            if not 0 <= self.start_layer < end:
                raise InputError(
                    f"method 'pai': start_layer {self.start_layer} and end_layer {self.end_layer} "
                    f"select no decoder layer (the model has {n})"
                )
            self.layers = list(range(self.start_layer, end))
        super().start(adapter, seqs, tokens)

    def scores(self, layer, s, ctx, module):
        s = torch.clamp_min(s, torch.finfo(s.dtype).min)
        if ctx.phase == "prefix" or (not self.prefill and ctx.phase in PREFILL):
            # a shared prefix's last row is not the row's last prompt position: unmodified, as
            # every prompt position before the last is in the unshared prefill; the official
            # schedule leaves the whole prefill (suffix included) unmodified
            return s
        _, img, _ = ctx.keys(s.shape[-1])
        m = (img & (ctx.branch == 0)[:, None])[:, None, :]  # [R, 1, K]: image keys of image-branch rows
        last = s[:, :, -1, :]
        s[:, :, -1, :] = torch.where(m, last + self.alpha * last.abs(), last)
        return s


@dataclass(frozen=True)
class PAI(Method):
    name = "pai"
    #: its decoder hooks read the prefill's attention mask as one tensor
    needs = ("plain_attention_mask",)
    defaults = MappingProxyType(
        {
            "alpha": 0.2,
            "gamma": 1.1,
            "start_layer": 2,
            "end_layer": None,
            "beta": 0.1,
            "use_attn": True,
            "use_cfg": True,
            "attn_schedule": "official",
        }
    )
    nullable = frozenset({"end_layer"})
    param_types = MappingProxyType({"end_layer": int})

    def validate(self, p):
        super().validate(p)
        if float(p["gamma"]) < 1:
            raise ValueError(f"parameter 'gamma' of method 'pai' must be >= 1, got {p['gamma']}")
        if int(p["start_layer"]) < 0:
            raise ValueError(f"parameter 'start_layer' of method 'pai' must be >= 0, got {p['start_layer']}")
        if p["end_layer"] is not None and int(p["end_layer"]) <= int(p["start_layer"]):
            raise ValueError(
                f"parameter 'end_layer' of method 'pai' must be > start_layer, got {p['end_layer']}"
            )
        if p["attn_schedule"] not in SCHEDULES:
            raise ValueError(
                f"parameter 'attn_schedule' of method 'pai' must be one of {', '.join(SCHEDULES)}, "
                f"got {p['attn_schedule']!r}"
            )

    def branches(self, request, ctx):
        self.require_image(request)
        out = [self.original(request)]
        if ctx.params["use_cfg"]:
            out.append(Branch(prompt=request.prompt, image=None, system=request.system, name="text_only"))
        return out

    def forward_hooks(self, adapter, params):
        if not params["use_attn"]:
            return None
        official = params["attn_schedule"] == "official"
        if official and params["use_cfg"] and float(params["gamma"]) == 1:
            return None  # CFGLogits returns before re-enabling the edit (CFG.py:30-31): never intervened
        # official with CFG on: use_cfg=True from llama_modify leaves the prefill unmodified (CFG.py:32-33,48-49)
        prefill = not (official and params["use_cfg"])
        return PAIHooks(int(params["start_layer"]), params["end_layer"], params["alpha"], True, prefill)

    def combine(self, logits, step, state):
        p = state.params
        if not p["use_cfg"]:
            return logits[..., 0, :]
        lc = torch.log_softmax(logits[..., 0, :], dim=-1)
        g = float(p["gamma"])
        if g == 1:
            return lc
        lu = torch.log_softmax(logits[..., 1, :], dim=-1)
        return g * (lc - lu) + lu

    def plausibility(self, logits, step, state):
        p = state.params
        if not p["use_cfg"] or float(p["gamma"]) == 1:
            return None
        return p["beta"]
