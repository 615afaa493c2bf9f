"""``sid``: Self-Introspective Decoding (Huo et al., ICLR 2025, arXiv 2408.02032; ``huofushuo/SID``).

The contrast branch is the **same input**; inside each of its forwards (prefill and every step)
CT²S ("context and text-aware token selection") keeps only a few image tokens from layer a on
(``huofushuo/SID@127dd41:transformers/src/transformers/models/llama/modeling_llama.py:769-803``,
the FastV block with ``vad=False``):

1. at decoder layer a = ``layer`` (``fast_v_agg_layer`` = 2) read layer a−1's attention
   probabilities, mean over heads, **last query row**, image columns (``:785-791``);
2. keep the K image tokens with the **lowest** attention (``topk(ATTENTION_RANK, largest=False)``,
   ``:793``); every other image token becomes a masked key (``:796-803``);
3. layers a…L−1 of that forward use the mask for every query row (``new_attention_mask`` is
   reused for the later layers, ``:851-852``): at prefill the prompt's later-layer states (and so
   the cache) are computed under the prefill's selection; each step re-selects with the new token
   as the query. Layers < a see everything.

The original branch is a normal forward (``vcd_sample.py:109-121``: ``use_fast_v = False``).
Combine (``vcd_sample.py:166-194``): s = (1+α)·ℓ − α·ℓ_SID with APC β on ℓ for sampling; with
``sample_greedy`` (the POPE script's default, ``pope_eval.py:87``) the token is the argmax of the
**un-cut** s — no APC in greedy mode.

Parameters: ``alpha`` = α = 0.5 and ``beta`` = β = 0.1 (the sampler's defaults,
``vcd_sample.py:168-169``: the scripts never pass ``cd_alpha``, their ``--cd-alpha 1`` is unused),
``layer`` = a = 2, ``keep`` = K = 100 (POPE, ``pope_eval.py:91``; CHAIR: 50,
``eval_utils/chair_eval.py:96``) out of ``keep_of`` = 576 image tokens (LLaVA-1.5): a row with n
image tokens keeps round(n·K/576) (at least 1, at most n) — exactly K on LLaVA-1.5; a ratio where
the count differs (Qwen2.5-VL's dynamic resolution; InstructBLIP's 32 Q-Former query outputs,
whose K the code leaves unset — K = 100 > 32 makes its ``topk`` fail; ours keeps 6: **UNVERIFIED**),
``select`` = "lowest" (``"highest"``: the code's ``vad=True`` "vision add" variant, ``:826``, with
``fast_v_attention_rank_add``), ``greedy_apc`` = False (True: APC in greedy mode too).
Decoding: the POPE script samples with ``sample_greedy`` (= greedy argmax of s): our greedy mode
is that; our sampling mode is ``--sample`` without ``sample_greedy``.

Divergences: per row image positions (the code reads row 0 and fixed ``key_position``; for
InstructBLIP that span is off by one, ``minigpt4/models/blip2_vicuna_instruct.py:453-457``: we use
the query outputs' own positions); masked keys get −∞ (the code's additive mask uses the dtype's
minimum: the same zero probability). The layers < a of the code's contrast forward use an all-ones
mask (no padding at batch 1); ours keep the padding mask. Prefix sharing is off for this method
(``share_prefix = False``): a shared prefix's later-layer states would be computed before the
row's own selection exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import torch

from ..attention import AttentionHooks, mask_keys
from ..types import InputError
from .base import Method


class SIDHooks(AttentionHooks):
    """Attention-conditioned key masking on the contrast rows (branch 1): layer a−1 picks the kept image keys from the last
    query row's head-mean attention; layers a…L−1 mask the others for every query row."""

    def __init__(self, layer: int, keep: int, keep_of: int, select: str):
        super().__init__()
        self.a, self.keep, self.keep_of, self.select_mode = layer, keep, keep_of, select
        self.masked = None

    def start(self, adapter, seqs, tokens):
        n = len(adapter.decoder_layers())
        if not 1 <= self.a < n:
            raise InputError(
                f"method 'sid': layer {self.a} must be in 1..{n - 1} (the model has {n} decoder layers)"
            )
        self.layers = list(range(self.a - 1, n))
        super().start(adapter, seqs, tokens)

    def probs(self, layer, p, v, ctx, module):
        if layer != self.a - 1:
            return
        att = p[:, :, -1, :].float().mean(1)  # [R, K]
        _, img, _ = ctx.keys(att.shape[-1])
        sid_rows = ctx.branch == 1
        masked = torch.zeros_like(img)
        for r in torch.nonzero(sid_rows).flatten().tolist():
            cols = torch.nonzero(img[r]).flatten()
            n = int(cols.numel())
            if n == 0:
                continue
            k = max(1, min(n, int(round(n * self.keep / self.keep_of))))
            order = torch.topk(att[r, cols], k, largest=(self.select_mode == "highest")).indices
            m = torch.ones(n, dtype=torch.bool, device=img.device)
            m[order] = False
            masked[r, cols] = m
        self.masked = masked

    def scores(self, layer, s, ctx, module):
        if layer < self.a:
            return s
        return mask_keys(s, self.masked[:, -s.shape[-1] :])


@dataclass(frozen=True)
class SID(Method):
    name = "sid"
    #: its decoder hooks read the prefill's attention mask as one tensor
    needs = ("plain_attention_mask",)
    defaults = MappingProxyType(
        {
            "alpha": 0.5,
            "beta": 0.1,
            "layer": 2,
            "keep": 100,
            "keep_of": 576,
            "select": "lowest",
            "greedy_apc": False,
        }
    )
    share_prefix = False

    def validate(self, p):
        super().validate(p)
        if int(p["layer"]) < 1:
            raise ValueError(f"parameter 'layer' of method 'sid' must be >= 1, got {p['layer']}")
        if int(p["keep"]) < 1 or int(p["keep_of"]) < 1:
            raise ValueError(
                f"parameters 'keep' and 'keep_of' of method 'sid' must be >= 1, "
                f"got {p['keep']} and {p['keep_of']}"
            )
        if p["select"] not in ("lowest", "highest"):
            raise ValueError(
                f"parameter 'select' of method 'sid' must be 'lowest' or 'highest', got {p['select']!r}"
            )

    def branches(self, request, ctx):
        self.require_image(request)
        o = self.original(request)
        from dataclasses import replace

        return [o, replace(o, name="sid")]

    def forward_hooks(self, adapter, params):
        return SIDHooks(int(params["layer"]), int(params["keep"]), int(params["keep_of"]), params["select"])

    def plausibility(self, logits, step, state):
        if state.temperature is None and not state.params["greedy_apc"]:
            return None
        return state.params["beta"]
