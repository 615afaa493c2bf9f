"""``vasparse``: VASparse, visual-aware token sparsification (Zhuang et al., CVPR 2025, arXiv 2501.06553).

Official code: ``mengchuang123/VASparse-github@4929816``.

Parameter ``variant``: ``variant="paper"`` (default) — the paper's three parts, read from its full text:

1. **Visual-aware token selection** (Eq. 3–5): at every decoding step, per attention head, the
   generated tokens in the cache (keys; the current token excepted) are ranked by
   δ_i = s_i² + λ·P_i with s_i the head's scaled score of the current query on key i and
   P_i = softmax_i(Σ_{k∈I(v)} a_{i,k}) — the attention token i paid to the image tokens when it
   was the query (here: the last decoder layer, mean over heads: the paper's "last attention head
   in the historical calculations", **UNVERIFIED** reading), normalised over the generated tokens.
   The top S = ⌈``sparse_rate``·L⌉ of the L are kept, the others dropped — here as per-head −∞ key
   masks in every layer (which layers: **UNVERIFIED**), recomputed every step. The paper
   merges the dropped tokens by k-NN density-peak clustering into kept ones: **not built**
   (dropped tokens are only masked; why: "Cluster merge" below).
2. **Sinking-attention penalty** (Eq. 7): (1+β_s)·qKᵀ − β_s·W⊙qKᵀ = qKᵀ·(1 + β_s(1 − w_j)) with
   w_j = softmax_j(Σ_{i≥j} a_{i,j}) the attention key j has received from all earlier queries
   (prefill rows and earlier steps, per layer and head, padding excluded), applied at decoding
   steps (not at the prefill) in every layer and head (**UNVERIFIED**: the paper names neither).
3. **Sparse-based visual contrastive decoding** (Eq. 6): s = (1+α)·ℓ − α·ℓ_φ with ℓ the
   (sparsified) logits and ℓ_φ = W_lm·e(y_{t−1}) — the LM head applied to the embedding of the
   current input token, no decoder pass (so the image mask S^m of the paper cannot change it and
   is omitted); APC β "inspired by VCD" (β not stated: **UNVERIFIED**, 0.1).

Parameters: ``alpha`` = α = 0.1, ``beta`` = β = 0.1, ``sink_beta`` = β_s = 0.1, ``lam`` = λ = 0.1,
``sparse_rate`` = 0.9 (the paper's S = 0.9·L, λ = α = β = 0.1), switches ``token_selection``,
``sink_penalty``, ``svcd`` (all True; off: the ablations of the paper's Table 4, except "w/o P" =
``lam: 0``). The paper decodes with beam search (beam 3 at 64 tokens, beam 2 at 512):
``generate(num_beams=3)`` (greedy mode).

``variant="code"`` — what the released code computes on its contrast path
(``decoder_zoo/VASparse/vasparse_decoding.py:783-802`` with ``patching_generate.py:492-497``
defaults: ``contrastive_rate`` 0.1, ``base_contrastive_layer`` 0, ``DoLa_is_layer`` True, mature
layer 32, ``relative_top`` 0.1): s = RT(ℓ) − log softmax(ℓ₀) − 0.1·ℓ₀, with RT the
relative-top-0.1 filter of log softmax(ℓ) (``:322-339``), ℓ₀ = W_lm·e(y_{t−1}) (the layer-0 "early
exit" = the embedding output, no norm: ``minigpt4/models/llava_llama.py:106-109``,
``minigpt4/sparse/LlamaModelPatching.py:173-176``), log softmax(ℓ₀) set to −1000 where RT cut the
token (``:791-792``, row 0's cut for every row in the code; per row here); no APC. What the code
does **not** run and this variant therefore leaves out: the contrast only fires when a
GroundingDINO helper reports the last noun "not-detected" and ``detector_used`` is never passed
(it crashes: ``VH_is_detected`` unbound) — here the contrast applies at every step; the run script
imports three functions that do not exist; the 50% image mask is built but never applied
(``shared_policy``); SparseVLM prefill pruning at layers [2, 6, 15, 19] and the every-16-tokens KV
averaging (``max_sentence_lenght``) are not ported; the sink penalty and the δ/P selection are
absent from the code.

**Cluster merge and SparseVLM prefill pruning: not built, and why**. Neither source
defines a merge that can be reproduced faithfully:

* *Paper* (Eq. 3–5 text): the dropped generated tokens are "grouped with k-NN
  density-peak clustering (Rodriguez & Laio)" and "each cluster is summed into one kept token". It
  gives no k, no cluster count or density cut, no feature space (keys per head? hidden states?) and
  no rule for which kept token receives a cluster: any choice would be ours, not the paper's.
* *Code*: the only merge is ``cluster_and_merge`` (``minigpt4/sparse/utils.py:218-267``: density =
  exp(−mean of the squared distances to the k = ``cluster_num`` nearest), parent distance, the top
  ``cluster_num`` of dist·density as centres, nearest-centre assignment, cluster mean). It is called
  only by SparseVLM's *prefill* pruning of the *visual* tokens' hidden states
  (``minigpt4/sparse/LlamaModelPatching.py:234-293``, layers ``[2, 6, 15, 19]`` at ``:48``; raters
  = text tokens whose mean softmax(v·tᵀ) exceeds the mean, ``:199-203``; kept = top
  rank(text→image attention)·13.5, ``:104,248``; the top 30 % + 1 of the pruned re-merged,
  ``:266-275``) — a different operation from the paper's decode-time merge of generated tokens.
  (a) The released default path never runs it: ``shared_policy = True``
  (``decoder_zoo/VASparse/vasparse_decoding.py:559``) skips the per-sample sparse prefill (``:570``),
  ``:602`` sets ``SparsePrefilling = False`` for the one multi-token (prefill) forward and ``:644``
  sets it True only afterwards, when every forward has one query and ``:234`` requires
  ``hidden_states.shape[1] != 1``. So the official default is *no merge* — what this
  implementation does. (b) Enabled, it crashes: ``cluster_num`` is read before assignment
  (``LlamaModelPatching.py:272``, UnboundLocalError; only the timing copy
  ``LlamaModelPatchingTimer.py:211`` sets it, to ⌊n/10⌋ + 1), and ``cluster_and_merge`` multiplies
  by an undefined ``norm_weight`` (``utils.py:262``, NameError) — there is no runnable reference to
  match. (c) A port would also need physical token removal inside the forward with later layers'
  positions renumbered contiguously (``:290``), batch 1 (``:235``), and at decode each layer
  positioned at its own KV length (``:227-232,328``) — outside the engine's one batched cache
  layout, and not expressible as per-head key masks (merged tokens are new keys with new positions).

Families: every family (InstructBLIP: P over the 32 Q-Former query outputs). Paper numbers
(Table 1 CHAIR, Table 3 MME, LLaVA-1.5) are for the paper's full method with the merge and beams:
a run of this implementation is labelled by its parts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

import torch

from ..attention import AttentionHooks, align_keys, mask_keys
from .base import Method


class VASparseHooks(AttentionHooks):
    """The current input token's embedding per row (``last_embed`` [R, D]) and, for the paper
    variant, token selection and the sink penalty (attention capture, score hooks and key masks across forwards)."""

    def __init__(self, select: bool, sink: bool, lam: float, rate: float, sink_beta: float):
        super().__init__()
        self.do_select, self.do_sink = select, sink
        self.lam, self.rate, self.sink_beta = float(lam), float(rate), float(sink_beta)
        self.recv: dict = {}
        self.paid = None
        self.last_embed = None

    def start(self, adapter, seqs, tokens):
        n = len(adapter.decoder_layers())
        if self.do_select or self.do_sink:
            self.layers = list(range(n))
        self._p_layer = n - 1
        super().start(adapter, seqs, tokens)

        def grab(module, args, output):
            self.last_embed = output[:, -1, :]

        self._handles.append(adapter.model.get_input_embeddings().register_forward_hook(grab))

    def new_forward(self, ctx):
        K, Q = ctx.valid.shape[1], ctx.q_len
        R = ctx.valid.shape[0]
        if self.do_sink:
            for l in list(self.recv):
                self.recv[l] = align_keys(self.recv[l], K, Q)
        if self.do_select:
            self.paid = align_keys(self.paid, K, Q, (R,)).to(ctx.valid.device)
            # the generated keys a step may drop (the current token itself stays), and how many
            prev = ctx.generated.clone()
            prev[:, -1] = False
            n = prev.sum(-1)
            self._prev = prev
            self._drop = n - torch.ceil(n.float() * self.rate).long()
            self._any_drop = ctx.phase == "step" and int(self._drop.max()) > 0

    def scores(self, layer, s, ctx, module):
        if ctx.phase != "step":
            return s
        K = s.shape[-1]
        valid = ctx.valid[:, -K:]
        if self.do_select and self._any_drop:
            prev, drop = self._prev[:, -K:], self._drop
            paid = self.paid[:, -K:].masked_fill(~prev, float("-inf"))
            P = torch.softmax(paid, -1).nan_to_num(0.0)  # rows without generated keys: 0
            delta = s[:, :, -1, :].float() ** 2 + self.lam * P[:, None, :]
            delta = delta.masked_fill(~prev[:, None, :], float("inf"))
            rank = delta.argsort(-1).argsort(-1)  # 0 = smallest δ
            dropped = (rank < drop.view(-1, 1, 1)) & prev[:, None, :]
            s = mask_keys(s, dropped[:, :, None, :])
        if self.do_sink:
            rv = self.recv.get(layer)
            if rv is None:
                rv = torch.zeros(s.shape[0], s.shape[1], K, device=s.device)
            w = torch.softmax(rv[:, :, -K:].masked_fill(~valid[:, None, :], float("-inf")), -1)
            s = s.clone()
            s[:, :, -1, :] = s[:, :, -1, :] * (1 + self.sink_beta * (1 - w)).to(s.dtype)
        return s

    def probs(self, layer, p, v, ctx, module):
        Q = p.shape[2]
        qv = ctx.valid[:, -Q:].to(torch.float32)  # padded query rows do not count
        if self.do_sink:
            got = (p.float() * qv[:, None, :, None]).sum(2)  # [R, H, K]
            prev = self.recv.get(layer)
            self.recv[layer] = got if prev is None else prev + got
        if self.do_select and layer == self._p_layer:
            _, img, _ = ctx.keys(p.shape[-1])
            self.paid[:, -Q:] = (p.float().mean(1) * img[:, None, :]).sum(-1)

    def select(self, index):
        for l, v in list(self.recv.items()):
            self.recv[l] = v.index_select(0, index.to(v.device))
        if self.paid is not None:
            self.paid = self.paid.index_select(0, index.to(self.paid.device))
        if self.last_embed is not None:
            self.last_embed = self.last_embed.index_select(0, index.to(self.last_embed.device))


def relative_top(scores: torch.Tensor, rt: float) -> torch.Tensor:
    """``relative_top_filter`` (``vasparse_decoding.py:322-339``): log softmax, −inf below
    log rt + max (at least one token kept)."""
    lp = scores.log_softmax(-1)
    thresh = torch.minimum(lp.max(-1, keepdim=True).values + math.log(rt), lp.max(-1, keepdim=True).values)
    return lp.masked_fill(lp < thresh, float("-inf"))


@dataclass(frozen=True)
class VASparse(Method):
    name = "vasparse"
    #: its decoder hooks read the prefill's attention mask as one tensor
    needs = ("plain_attention_mask",)
    defaults = MappingProxyType(
        {
            "variant": "paper",
            "alpha": 0.1,
            "beta": 0.1,
            "sink_beta": 0.1,
            "lam": 0.1,
            "sparse_rate": 0.9,
            "token_selection": True,
            "sink_penalty": True,
            "svcd": True,
            "contrastive_rate": 0.1,
            "relative_top": 0.1,
        }
    )

    def validate(self, p):
        super().validate(p)
        if p["variant"] not in ("paper", "code"):
            raise ValueError(
                f"parameter 'variant' of method 'vasparse' must be 'paper' or 'code', got {p['variant']!r}"
            )
        if not 0 < float(p["sparse_rate"]) <= 1:
            raise ValueError(
                f"parameter 'sparse_rate' of method 'vasparse' must be in (0, 1], got {p['sparse_rate']}"
            )
        if not 0 < float(p["relative_top"]) <= 1:
            raise ValueError(
                f"parameter 'relative_top' of method 'vasparse' must be in (0, 1], got {p['relative_top']}"
            )

    def branches(self, request, ctx):
        self.require_image(request)
        return [self.original(request)]

    def forward_hooks(self, adapter, params):
        paper = params["variant"] == "paper"
        return VASparseHooks(
            paper and params["token_selection"],
            paper and params["sink_penalty"],
            params["lam"],
            params["sparse_rate"],
            params["sink_beta"],
        )

    def _phi(self, state):
        ad = state.contexts[0].adapter if state.contexts else state.hooks.adapter
        return ad.lm_head()(state.hooks.last_embed[state.rows[..., 0]]).float()

    def combine(self, logits, step, state):
        p = state.params
        l0 = logits[..., 0, :]
        if p["variant"] == "code":
            phi = self._phi(state)
            f = relative_top(l0, float(p["relative_top"]))
            b = torch.where(f < -1e3, torch.full_like(phi, -1e3), phi.log_softmax(-1))
            return f - b - float(p["contrastive_rate"]) * phi
        if not p["svcd"]:
            return l0
        a = float(p["alpha"])
        return (1 + a) * l0 - a * self._phi(state)

    def plausibility(self, logits, step, state):
        p = state.params
        if p["variant"] == "code" or not p["svcd"]:
            return None
        return p["beta"]
