"""``opera``: over-trust penalty + retrospection-allocation (Huang et al., CVPR 2024, arXiv 2311.17911;
``shikiw/OPERA@61426ef``, ``transformers-4.29.2/src/transformers/generation/utils.py``
``opera_beam_search`` L3116–3674).

Beam search (``num_beams`` = 5) where, at every step and for every beam b:

1. z = the beam's raw next-token logits; candidates Y_b = top ``num_attn_candidates`` (N_can = 5) of z;
2. every candidate c is forwarded on top of the beam (look-ahead, E7) and the **last** decoder
   layer's attention of its query row is read (E3: max over heads);
3. ω = the rows of all generated tokens so far plus c's row, each renormalised over all keys
   (``attn_last / attn_last.sum(-1)``), cut to rows and columns at or after the response start
   (the window: the whole response so far, L3396–3399), scaled by σ = ``scale_factor`` = 50;
4. column scores s_j = 1e-7·Π_{i≥j} σ·ω_{i,j}; φ(c) = max_j s_j, loc(c) = argmax_j (L3401–3410);
   while the window has ≤ 10 columns the penalty is −(c's attention mass on the image tokens)
   instead (L3414–3419: a bonus, code only);
5. candidate scores z(c) − α·φ(c) (α = ``penalty_weights`` = 1), every other token −999, then
   ``log_softmax`` + beam score and the beam step (top 2·num_beams over beams × vocabulary, L3561–3590).

The chosen candidate's look-ahead forward is kept as its beam's next forward (its KV row, logits
and attention row), saving one forward per step (methods-3 §1.1: equivalent up to numerics).
Scores are float32 throughout; the reference stores the column scores in float16 from fp16
attention (products over long windows overflow/underflow there) — a marked divergence.

**Retrospection (rollback, E12) is not implemented here** (``threshold`` = 15 is accepted and
recorded but unused): it only fires once one location has been the per-beam mode more than
``threshold`` times at a location ≥ 10 tokens into the response, i.e. in long captions (≥ 26
tokens); POPE's 10-token answers never reach it. UNFINISHED: see the report / README row.

Other defaults (code = paper): ``num_beams`` 5, ``scale_factor`` 50, ``num_attn_candidates`` 5,
``penalty_weights`` 1 (``eval_configs/llava-1.5_eval.yaml``, ``chair_eval.py``, ``pope_eval.py``);
README fast setting: threshold 25, N_can 1. Finished hypotheses are scored Σ log p /
length^``length_penalty`` with the prompt in the length (4.29's ``BeamHypotheses``:
``length_norm="total"``); our prompt length counts the expanded image tokens (OPERA's LLaVA
counts one ``<image>`` placeholder id) and we keep 5.24's bookkeeping at ``max_new_tokens``
(:mod:`vcdflow.decoding.beams`). Image positions come from the adapter's image mask (LLaVA's 576,
InstructBLIP's 32 query tokens — the code's window there is off by one —, Qwen2.5-VL's dynamic
span). Greedy only (the reference's greedy branch is ``assert False``). Every family.

Divergences: when a beam's best continuations include EOS, the reference may continue a beam
whose last token was not a candidate (score ≈ −1000, never competitive); here only forwarded
candidates continue (fewer beams run then). The per-beam location history is per beam slot in
the reference; it only feeds the (unimplemented) rollback.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import torch

from ..attention import AttentionHooks
from ..beams import BeamSearch, Layout, _choice
from .base import Method


class OperaAttention(AttentionHooks):
    """E3 for OPERA: after every step forward, each row's last query row of the last decoder
    layer (max over heads) is appended to that row's history, kept as (attention over the row's
    generated-token keys, row sum over all keys, mass on its image keys); re-indexed with the rows."""

    def __init__(self):
        super().__init__(layers=[-1])
        self.hist: list = []

    def probs(self, layer, p, v, ctx, module):
        if ctx.phase != "step":
            return
        m = p[:, :, -1, :].float().max(dim=1).values               # [R, K]
        valid, image, _ = ctx.keys(m.shape[-1])
        real = valid.long().cumsum(-1) - 1
        rows = []
        for k, (r, b) in enumerate(zip(ctx.rows.request, ctx.rows.branch)):
            n_prompt = int(self._prompt[(r, b)].shape[0])
            gen = valid[k] & (real[k] >= n_prompt)
            rows.append((m[k][gen], m[k].sum(), m[k][image[k]].sum()))
        if not self.hist:
            self.hist = [[] for _ in rows]
        self.hist = [h + [x] for h, x in zip(self.hist, rows)]

    def select(self, index):
        if self.hist:
            self.hist = [self.hist[i] for i in index.tolist()]


def opera_penalty(hist: list, scale: float) -> tuple[float, int, float]:
    """(φ, loc, image mass) of the newest row of ``hist`` (a list of (keys, sum, image) rows, row i
    over i+1 generated keys): the window ω (rows renormalised, ×σ), column products × 1e-7, max."""
    n = len(hist)
    W = torch.zeros((n, n))
    for i, (keys, total, _) in enumerate(hist):
        W[i, :keys.shape[0]] = (keys / total).cpu()
    W = W * scale
    cols = torch.stack([1e-7 * W[j:, j].prod() for j in range(n)])
    phi, loc = cols.max(0)
    return float(phi), int(loc), float(hist[-1][2] / hist[-1][1])


class OperaSearch(BeamSearch):
    """OPERA's beams over look-ahead candidate slots (module docstring). Each call: the forwarded
    candidates are penalised and the beam step runs; the kept candidates' next top-N_can are
    forwarded as the next slots."""

    def __init__(self, hooks: OperaAttention, num_beams: int, n_can: int, scale: float, alpha: float,
                 length_penalty: float = 1.0):
        super().__init__(score=None, num_beams=num_beams, length_penalty=length_penalty, early_stopping=False,
                         length_norm="total")
        self.hooks = hooks
        self.n_can = int(n_can)
        self.scale = float(scale)
        self.alpha = float(alpha)
        self.z: dict[int, list] = {}       # request -> per parent beam: (candidate ids, their raw logits)

    def _expand(self, r, parents_slots, logits, layout, picks, feed):
        spans = {(sp[0], sp[1]): sp for sp in layout.spans()}
        cands = []
        for p_new, old in enumerate(parents_slots):
            row = spans[(r, old)][2]
            zt, zi = torch.topk(logits[row].float(), self.n_can)
            cands.append((zi.tolist(), zt.cpu()))
            for j, t in enumerate(zi.tolist()):
                picks.append((r, old, p_new * self.n_can + j))
                feed.append(t)
        self.z[r] = cands

    def step(self, step: int, logits: torch.Tensor, layout: Layout):
        by_req: dict[int, list] = {}
        for sp in layout.spans():
            by_req.setdefault(sp[0], []).append(sp)
        picks, feed, tokens, done = [], [], {}, {}
        for r, sps in by_req.items():
            if r not in self.z:                       # prefill: the prompt's candidates
                self.state[r] = None
                self._expand(r, [sps[0][1]], logits, layout, picks, feed)
                continue
            cands = self.z.pop(r)
            V = logits.shape[-1]
            lp = torch.full((len(cands), V), -999.0)
            slot_of: dict[tuple[int, int], int] = {}
            for b, (ids, zs) in enumerate(cands):
                scores = zs.clone()
                for j, t in enumerate(ids):
                    sp = sps[b * self.n_can + j]
                    phi, _, img = opera_penalty(self.hooks.hist[sp[2]], self.scale)
                    pen = -img if len(self.hooks.hist[sp[2]]) <= 10 else phi
                    scores[j] = zs[j] - self.alpha * pen
                    slot_of[(b, t)] = sp[1]
                lp[b, torch.tensor(ids)] = scores
            lp = torch.log_softmax(lp, dim=-1)
            st = self.state[r]
            first = st is None
            if first:
                from ..beams import _Beams

                st = _Beams(running=[[]], running_scores=torch.zeros(1))
                self.state[r] = st
            keep = min(max(2, 1 + len(layout.eos)) * self.k, lp.numel())
            top, idx = torch.topk((lp + st.running_scores[:, None]).reshape(-1), k=keep)
            beam, tok = (idx // V).tolist(), (idx % V).tolist()
            runnable = [(b, t) in slot_of for b, t in zip(beam, tok)]
            nxt, why, ids = self.advance(st, top, beam, tok, layout, r, runnable=runnable)
            tokens[r] = ids
            if nxt is None:
                done[r] = why
                continue
            self._expand(r, [slot_of[(beam[j], tok[j])] for j in nxt], logits, layout, picks, feed)
        return _choice(layout, picks, feed, tokens, done)


@dataclass(frozen=True)
class OPERA(Method):
    name = "opera"
    defaults = MappingProxyType({"num_beams": 5, "scale_factor": 50.0, "threshold": 15,
                                 "num_attn_candidates": 5, "penalty_weights": 1.0})
    requires_image = False
    mode = "greedy"

    def validate(self, p):
        super().validate(p)
        for k in ("num_beams", "num_attn_candidates"):
            if int(p[k]) < 1:
                raise ValueError(f"parameter {k!r} of method {self.name!r} must be >= 1, got {p[k]}")
        if float(p["scale_factor"]) <= 0:
            raise ValueError(f"parameter 'scale_factor' of method {self.name!r} must be > 0, got {p['scale_factor']}")

    def forward_hooks(self, adapter, params):
        return OperaAttention()

    def search(self, score, params, hooks, opts):
        if opts.get("num_beams", 1) > 1:
            raise ValueError(f"method {self.name!r} sets its beams with parameter 'num_beams'")
        return OperaSearch(hooks, int(params["num_beams"]), int(params["num_attn_candidates"]),
                           float(params["scale_factor"]), float(params["penalty_weights"]),
                           length_penalty=opts.get("length_penalty", 1.0))

    def combine(self, logits, step, state):
        return logits[..., 0, :]

    def plausibility(self, logits, step, state):
        return None
