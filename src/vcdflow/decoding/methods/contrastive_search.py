"""``contrastive_search``: contrastive search (Su et al., NeurIPS 2022, "A Contrastive Framework
for Neural Text Generation"; Hugging Face ``penalty_alpha``/``top_k``).

Each step, with the model's scores s (the original branch's logits) and p = softmax(s):

    V_k  = top-k of p;  for each candidate v ∈ V_k forward v (look-ahead) → h_v
    score(v) = (1 − α)·p(v) − α·max_j cos(h_v, H_j)        (degeneration penalty)
    pick argmax; keep that candidate's KV row, hidden state and next logits (no extra forward)

H = the final-layer hidden states (``hidden_states[-1]``, after the final norm) of every context
position: the whole prompt — image tokens included, as HF does for an LVLM — and every chosen
token. Source: transformers 4.29.2 ``generation/utils.py`` ``contrastive_search`` (L1879–2200)
and ``_ranking_fast`` (L5241–5264) as vendored in ``shikiw/OPERA@61426ef``; the same code is in
4.36 and, since transformers 5, only in the Hub repo ``transformers-community/contrastive-search``
(the Hub is unreachable from this project's machines).

Parameters: ``penalty_alpha`` = α = 0.6, ``top_k`` = k = 4 (the HF documentation's example and
common presets). The paper's language-model setting is k = 8, α = 0.6 (``yxuansu/SimCTG``
``document_generation/inference.sh``; its READMEs also use k ∈ {4, 5, 8}, α ∈ {0.5, 0.6, 0.65}):
set ``top_k: 8`` for it. k = 4 stays the default because no LVLM paper reports contrastive search
(there is no paper number to reproduce on these benchmarks) and every recorded run used it. HF runs contrastive search only
when α > 0 and k > 1 and ``do_sample=False``; here α = 0 is plain greedy over the top-k and the
method is greedy-only (``mode = "greedy"``; HF defines no sampling variant).

Divergences: HF's 4.29/4.36 cosine does not mask left padding in a batch; here each request's H
holds only its own positions (batched = batch-1); with shared-prefix prefill H is the shared
prefix's states followed by the row's suffix states. Every family; no image needed (text-only
prompts use the prompt's own states).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from ..beams import ContrastiveSearch as _Search
from ..beams import FinalHidden
from .base import Method


@dataclass(frozen=True)
class ContrastiveSearch(Method):
    name = "contrastive_search"
    #: its decoder hooks read the prefill's attention mask as one tensor
    needs = ("plain_attention_mask",)
    defaults = MappingProxyType({"penalty_alpha": 0.6, "top_k": 4})
    requires_image = False
    mode = "greedy"

    def validate(self, p):
        super().validate(p)
        if not 0 <= float(p["penalty_alpha"]) <= 1:
            raise ValueError(
                f"parameter 'penalty_alpha' of method {self.name!r} must be in [0, 1], "
                f"got {p['penalty_alpha']}"
            )
        if int(p["top_k"]) < 1:
            raise ValueError(f"parameter 'top_k' of method {self.name!r} must be >= 1, got {p['top_k']}")

    def forward_hooks(self, adapter, params):
        return FinalHidden()

    def search(self, score, params, hooks, opts):
        if opts.get("num_beams", 1) > 1:
            raise ValueError(f"method {self.name!r} is its own search: num_beams must be 1")
        return _Search(score, float(params["penalty_alpha"]), int(params["top_k"]), hooks)

    def combine(self, logits, step, state):
        return logits[..., 0, :]

    def plausibility(self, logits, step, state):
        return None
