"""``opera``: over-trust penalty + retrospection-allocation (Huang et al., CVPR 2024, arXiv 2311.17911;
``shikiw/OPERA@61426ef``, ``transformers-4.29.2/src/transformers/generation/utils.py``
``opera_beam_search`` L3116–3674).

Beam search (``num_beams`` = 5) where, at every step and for every beam b:

1. z = the beam's raw next-token logits; candidates Y_b = top ``num_attn_candidates`` (N_can = 5) of z;
2. every candidate c is forwarded on top of the beam (look-ahead) and the **last** decoder
   layer's attention of its query row is read (max over heads);
3. ω = the rows of all generated tokens so far plus c's row, each renormalised over all keys
   (``attn_last / attn_last.sum(-1)``, L3415), cut to rows and columns at or after the response
   start (the window: the whole response so far, L3420), scaled by σ = ``scale_factor`` = 50;
4. column scores s_j = 1e-7·Π_{i≥j} σ·ω_{i,j}; φ(c) = max_j s_j, loc(c) = argmax_j (L3425–3436);
   while the window has ≤ 10 columns the penalty is −(c's attention mass on the image tokens)
   instead (L3440: a bonus, code only);
5. candidate scores z(c) − α·φ(c) (α = ``penalty_weights`` = 1), every other token −999, then
   ``log_softmax`` + beam score and the beam step (top 2·num_beams over beams × vocabulary, L3449,
   L3556–3610).

The chosen candidate's look-ahead forward is kept as its beam's next forward (its KV row, logits
and attention row), saving one forward per step (equivalent up to numerics).
**Penalty precision** (``penalty_dtype``): the reference computes the column scores in float16
(the model runs in fp16, ``minigpt4/models/llava.py:76``; its attentions come back in the query
dtype; ``attn_local_scores`` is an fp16 buffer, L3424–3428): the renormalised rows, σ·ω and the
column product are fp16 numbers, so Π overflows to +inf past 65504 and φ = 1e-7·Π is either
≤ 6.6e-3 — too small to reorder candidates whose logits differ by ≳ 0.01, and quantised, so small
scores tie and loc is the first of them — or +inf (the candidate is eliminated). ``"float16"``
reproduces that regime whatever the model dtype (attention rows rounded to fp16, the row sum,
the division, σ·ω and 1e-7·Π rounded to fp16, the product accumulated in float32 as CUDA's
``prod`` does for half); it is the default under ``protocol: opera``. ``"float32"`` (the method's
default elsewhere) keeps φ continuous: for 6.6e4 < Π ≲ 1e7 it penalises by ≤ 1 where the
reference eliminates the candidate.

**Retrospection (rollback)**, ``retrospection`` = True (L3442–3560): every step each beam
slot records the mode (over its candidates) of loc(c); with s = the mode of those over the beam
slots, if every slot's history holds s **more than** ``threshold`` (r = 15; the paper says ≥)
times and s ≥ 10, the decode goes back to response position p = s + 1 (at most N_can rollbacks per
position, else p − 1, else none): the beams, beam scores and finished hypotheses of step
min(p, t − 1) are restored (the code restores ``history_states[-2]`` after popping
``cur_response_lens − p − 2`` states), the restored beams are re-fed from the prompt (the KV cache
forgets its generated columns — masked out, positions restarted after the prompt — so the other
requests of the batch decode on undisturbed), and that step is re-chosen over the whole
vocabulary — logits shifted so that their minimum is −999, the (beam, token) choices made there before (accumulated per position,
cleared at p + 1) set to −999, no candidate penalty. The location history is per beam slot, not
per lineage (a code quirk we copy); where fewer beams run than slots, slot b takes beam b mod n.
``Output.meta["opera_rollbacks"]`` lists the positions re-chosen. The 512-token history cap is
not applied.

Other defaults (code = paper): ``num_beams`` 5, ``scale_factor`` 50, ``num_attn_candidates`` 5,
``penalty_weights`` 1 (``eval_configs/llava-1.5_eval.yaml``, ``chair_eval.py``, ``pope_eval.py``);
README fast setting: threshold 25, N_can 1. Finished hypotheses are scored Σ log p /
length^``length_penalty`` with the prompt in the length (4.29's ``BeamHypotheses``:
``length_norm="total"``); our prompt length counts the expanded image tokens (OPERA's LLaVA
counts one ``<image>`` placeholder id) and we keep 5.24's bookkeeping at ``max_new_tokens``
(:mod:`vcdflow.decoding.beams`); ``length_norm`` = ``"total_bos"`` counts one prompt id instead —
InstructBLIP in OPERA's harness, where LAVIS's ``generate`` passes ``inputs_embeds`` only and 4.29
starts ``input_ids`` as one BOS (``utils.py`` L548–550, L584–594). **Logits processors**:
``repetition_penalty`` (θ = 1.0: off) over ``repetition_context`` ids (:mod:`vcdflow.decoding.processors`)
apply to each beam's log-probs after the ``log_softmax`` of step 5 and of the rollback's re-choice,
before the beam score (``logits_processor(input_ids, next_token_scores)``, L3567, on the beam's
``input_ids``); OPERA's InstructBLIP runs LAVIS's ``generate`` default θ = 1.5 over one BOS and the
generated ids (``minigpt4/models/blip2_vicuna_instruct.py:252,379-390``; protocol ``opera``), its
LLaVA-1.5 none. Image positions come from the adapter's image mask (LLaVA's 576,
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
from ..beams import BeamSearch, Layout, _Beams, _choice
from ..processors import check_processor_params
from .base import Method


class OperaAttention(AttentionHooks):
    """Attention capture for OPERA: after every step forward, each row's last query row of the last decoder
    layer (max over heads) is appended to that row's history, kept as (attention over the row's
    generated-token keys, row sum over all keys, mass on its image keys); re-indexed with the rows."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        super().__init__(layers=[-1])
        self.hist: list = []
        self.dtype = dtype  # float16: the rows as an fp16 model returns them (the reference's)

    def probs(self, layer, p, v, ctx, module):
        if ctx.phase != "step":
            return
        M = p.to(self.dtype).float().max(dim=1).values  # [R, Q, K]
        Q, K = M.shape[1], M.shape[2]
        valid, image, _ = ctx.keys(K)
        real = valid.long().cumsum(-1) - 1
        if not self.hist:
            self.hist = [[] for _ in range(M.shape[0])]
        for k, (r, b) in enumerate(zip(ctx.rows.request, ctx.rows.branch)):
            n_prompt = int(self._prompt[(r, b)].shape[0])
            gen = valid[k] & (real[k] >= n_prompt)
            out = []
            for q in range(Q):  # several real queries: a rollback's replay of the generated ids
                if not bool(valid[k, K - Q + q]):
                    continue
                g = int(real[k, K - Q + q]) - n_prompt
                m = M[k, q]
                out.append((m[gen][: g + 1], m.sum(), m[image[k]].sum()))
            self.hist[k] = out if len(out) > 1 else self.hist[k] + out

    def select(self, index):
        if self.hist:
            self.hist = [self.hist[i] for i in index.tolist()]


def opera_penalty(hist: list, scale: float, dtype: torch.dtype = torch.float32) -> tuple[float, int, float]:
    """(φ, loc, image mass) of the newest row of ``hist`` (a list of (keys, sum, image) rows, row i
    over i+1 generated keys): the window ω (rows renormalised, ×σ), column products × 1e-7, max.
    ``dtype`` float16: every stored value rounded to fp16 as in the reference (module docstring:
    φ ≤ 6.6e-3 or +inf)."""
    n = len(hist)
    r = (lambda x: x.float()) if dtype == torch.float32 else (lambda x: x.to(dtype).float())
    rows = [r(r(keys) / r(total)) for keys, total, _ in hist]
    W = r(torch.nn.utils.rnn.pad_sequence(rows, batch_first=True).cpu() * scale)  # [n, n], row i: i+1 keys
    low = torch.ones((n, n), dtype=torch.bool).tril()
    cols = r(1e-7 * r(torch.where(low, W, torch.ones_like(W)).prod(dim=0)))  # column j: Π_{i≥j} σ·ω_ij
    phi = cols.max()
    loc = int(torch.nonzero(cols == phi)[0])  # the first maximal column
    return float(phi), loc, float(r(r(hist[-1][2]) / r(hist[-1][1])))


def _mode(values: list[int]) -> int:
    """``torch.mode``: the most frequent value, the smallest among ties."""
    return int(torch.tensor(values).mode().values)


class OperaSearch(BeamSearch):
    """OPERA's beams over look-ahead candidate slots (module docstring). A request's calls:

    * ``expand``: the rows are running beams; forward each beam's top-N_can candidates as slots;
    * ``opera``: the rows are those candidates; penalise them, record the per-beam location
      modes, then either roll back (the beams, scores and hypotheses of an earlier step are
      restored and re-fed from the prompt, :class:`~vcdflow.decoding.beams.Choice` ``replay``) or
      run the beam step and expand the kept candidates;
    * ``ban``: the rows are the restored beams; the step is re-chosen over the whole vocabulary
      (logits shifted so that min = −999, the (beam, token) choices made there before set to −999),
      then the chosen tokens are fed (→ ``expand``)."""

    def __init__(
        self,
        hooks: OperaAttention,
        num_beams: int,
        n_can: int,
        scale: float,
        alpha: float,
        threshold: int,
        retrospection: bool = True,
        length_penalty: float = 1.0,
        contexts=None,
        length_norm: str = "total",
        processors: dict | None = None,
    ):
        super().__init__(
            score=None,
            num_beams=num_beams,
            length_penalty=length_penalty,
            early_stopping=False,
            length_norm=length_norm,
            processors=processors,
            hooks=hooks,
        )
        self.hooks = hooks
        self.n_can = int(n_can)
        self.scale = float(scale)
        self.alpha = float(alpha)
        self.threshold = int(threshold)
        self.retrospection = bool(retrospection)
        self.z: dict[int, list] = {}  # request -> per parent beam: (candidate ids, their raw logits)
        self.mode: dict[int, str] = {}
        self.snaps: dict[int, dict] = {}  # request -> step -> beam state before that step's choice
        self.chosen: dict[int, dict] = {}  # request -> step -> [(source beam, token)] of the kept beams
        self.locs: dict[int, list] = {}  # request -> per beam slot: location modes per step
        self.times: dict[int, dict] = {}  # request -> position -> rollbacks done there
        self.rejects: dict[int, dict] = {}  # request -> position -> banned (beam, token)
        self.ban: dict[int, tuple] = {}
        #: per request context: ``meta["opera_rollbacks"]`` lists the response positions re-chosen
        self.contexts = contexts

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
        self.mode[r] = "opera"

    @staticmethod
    def _copy(st: _Beams | None):
        if st is None:
            return None
        return _Beams(
            running=[list(x) for x in st.running],
            running_scores=st.running_scores.clone(),
            finished=list(st.finished),
            open=st.open,
        )

    def step(self, step: int, logits: torch.Tensor, layout: Layout):
        by_req: dict[int, list] = {}
        for sp in layout.spans():
            by_req.setdefault(sp[0], []).append(sp)
        picks, feed, tokens, done = [], [], {}, {}
        replay_of: dict[int, list] = {}  # index into picks -> ids to re-feed
        V = logits.shape[-1]
        for r, sps in by_req.items():
            mode = self.mode.get(r, "expand")
            if mode == "expand":
                if r not in self.snaps:
                    if self.contexts is not None:
                        self.contexts[r].meta["opera_rollbacks"] = []
                    self.state[r] = None
                    for d in (self.snaps, self.chosen, self.times, self.rejects):
                        d[r] = {}
                    self.locs[r] = [[] for _ in range(self.k)]
                self._expand(r, [sp[1] for sp in sps], logits, layout, picks, feed)
                continue
            if mode == "ban":
                rp, target = self.ban.pop(r)
                st = self.state[r]
                z = torch.stack([logits[sp[2]].float().cpu() for sp in sps])
                z = z - (999.0 + z.min(dim=-1, keepdim=True).values)
                for b, t in self.rejects[r][rp]:
                    if b < z.shape[0]:
                        z[b, t] = -999.0
                lp = self.process(torch.log_softmax(z, dim=-1), r, st.running)
                keep = min(max(2, 1 + len(layout.eos)) * self.k, lp.numel())
                top, idx = torch.topk((lp + st.running_scores[:, None]).reshape(-1), k=keep)
                beam, tok = (idx // V).tolist(), (idx % V).tolist()
                nxt, why, ids = self.advance(st, top, beam, tok, layout, r)
                tokens[r] = ids
                if nxt is None:
                    done[r] = why
                    continue
                self.chosen[r][target] = [(beam[j], tok[j]) for j in nxt]
                for new, j in enumerate(nxt):
                    picks.append((r, sps[beam[j]][1], new))
                    feed.append(tok[j])
                self.mode[r] = "expand"
                continue
            # mode "opera": the forwarded candidates
            cands = self.z.pop(r)
            lp = torch.full((len(cands), V), -999.0)
            slot_of: dict[tuple[int, int], int] = {}
            modes = []
            for b, (ids, zs) in enumerate(cands):
                scores = zs.clone()
                locs = []
                for j, t in enumerate(ids):
                    sp = sps[b * self.n_can + j]
                    hist = self.hooks.hist[sp[2]]
                    phi, loc, img = opera_penalty(hist, self.scale, self.hooks.dtype)
                    pen = -img if len(hist) <= 10 else phi
                    scores[j] = zs[j] - self.alpha * pen
                    slot_of[(b, t)] = sp[1]
                    locs.append(loc)
                modes.append(_mode(locs))
                lp[b, torch.tensor(ids)] = scores
            lp = torch.log_softmax(lp, dim=-1)
            st = self.state[r]
            lp = self.process(lp, r, [[]] if st is None else st.running)
            s_now = 0 if st is None else len(st.running[0])
            slot_modes = [modes[b % len(modes)] for b in range(self.k)]
            for b in range(self.k):
                self.locs[r][b].append(slot_modes[b])
            self.snaps[r][s_now] = self._copy(st)
            back = self._rollback(r, _mode(slot_modes), s_now) if self.retrospection else None
            if back is not None:
                rp, target = back
                if self.contexts is not None:
                    self.contexts[r].meta.setdefault("opera_rollbacks", []).append(target)
                snap = self._copy(self.snaps[r][target])
                self.state[r] = snap
                for b in range(self.k):
                    del self.locs[r][b][target + 1 :]
                self.rejects[r].setdefault(rp, [])
                self.rejects[r][rp] = self.rejects[r][rp] + list(self.chosen[r].get(target, []))
                self.rejects[r][rp + 1] = []
                self.ban[r] = (rp, target)
                self.mode[r] = "ban"
                tokens[r] = list(snap.running[0])
                for new in range(len(snap.running)):
                    replay_of[len(picks)] = list(snap.running[new])
                    picks.append((r, sps[0][1], new))
                    feed.append(0)
                continue
            if st is None:
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
            self.chosen[r][s_now] = [(beam[j], tok[j]) for j in nxt]
            self._expand(r, [slot_of[(beam[j], tok[j])] for j in nxt], logits, layout, picks, feed)
        ch = _choice(layout, picks, feed, tokens, done)
        if replay_of:  # OPERA has one branch: pick i is new row i
            ch.replay = replay_of
        return ch

    def _rollback(self, r: int, loc: int, s_now: int):
        """(position key, step to re-choose) when every beam slot's location history holds ``loc``
        more than ``threshold`` times and ``loc`` ≥ 10 (``opera_beam_search`` L3459–3475), else None."""
        if not all(sum(1 for x in h if x == loc) > self.threshold for h in self.locs[r]):
            return None
        if loc < 10:
            return None
        rp = loc + 1
        times = self.times[r]
        if times.get(rp, 0) >= self.n_can:
            rp -= 1
            if times.get(rp, 0) >= self.n_can:
                return None
        times[rp] = times.get(rp, 0) + 1
        target = min(rp, s_now - 1)  # the code restores history_states[-2] after popping
        if target < 1 or target not in self.snaps[r] or self.snaps[r][target] is None:
            return None
        return rp, target


#: ``penalty_dtype`` values: the reference's fp16 column scores, or continuous float32 ones
PENALTY_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass(frozen=True)
class OPERA(Method):
    name = "opera"
    #: its decoder hooks read the prefill's attention mask as one tensor
    needs = ("plain_attention_mask",)
    defaults = MappingProxyType(
        {
            "num_beams": 5,
            "scale_factor": 50.0,
            "threshold": 15,
            "num_attn_candidates": 5,
            "penalty_weights": 1.0,
            "retrospection": True,
            "penalty_dtype": "float32",
            "length_norm": "total",
            "repetition_penalty": 1.0,
            "repetition_context": "prompt",
        }
    )
    requires_image = False
    mode = "greedy"

    def validate(self, p):
        super().validate(p)
        for k in ("num_beams", "num_attn_candidates"):
            if int(p[k]) < 1:
                raise ValueError(f"parameter {k!r} of method {self.name!r} must be >= 1, got {p[k]}")
        if float(p["scale_factor"]) <= 0:
            raise ValueError(
                f"parameter 'scale_factor' of method {self.name!r} must be > 0, got {p['scale_factor']}"
            )
        if p["penalty_dtype"] not in PENALTY_DTYPES:
            raise ValueError(
                f"parameter 'penalty_dtype' of method {self.name!r} must be one of "
                f"{', '.join(PENALTY_DTYPES)}, got {p['penalty_dtype']!r}"
            )
        if p["length_norm"] not in ("total", "total_bos"):
            raise ValueError(
                f"parameter 'length_norm' of method {self.name!r} must be 'total' or 'total_bos', "
                f"got {p['length_norm']!r}"
            )
        check_processor_params(self.name, p)

    def forward_hooks(self, adapter, params):
        return OperaAttention(PENALTY_DTYPES[params["penalty_dtype"]])

    def search(self, score, params, hooks, opts):
        if opts.get("num_beams", 1) > 1:
            raise ValueError(f"method {self.name!r} sets its beams with parameter 'num_beams'")
        return OperaSearch(
            hooks,
            int(params["num_beams"]),
            int(params["num_attn_candidates"]),
            float(params["scale_factor"]),
            float(params["penalty_weights"]),
            int(params["threshold"]),
            bool(params["retrospection"]),
            length_penalty=opts.get("length_penalty", 1.0),
            contexts=opts.get("contexts"),
            length_norm=params["length_norm"],
            processors=self.processors(params),
        )

    def combine(self, logits, step, state):
        return logits[..., 0, :]

    def plausibility(self, logits, step, state):
        return None
