"""Searches over several rows per request: beam search, look-ahead candidates and the
step protocol that lets the one decoder (:func:`vcdflow.decoding.engine.decode_rows`) re-index
its rows freely.

A *search* is a chooser object with ``step(step, logits, layout) -> Choice``. The engine calls it
once per forward with the last-position logits of every live row and the row :class:`Layout`
(request / branch / **slot** of each row: a slot is one beam, or one look-ahead candidate, of a
request; every slot carries all branches of its request, branch-major inside the slot). The
:class:`Choice` says which of the current rows the next forward is made of (``rows``: repeats
and reorders are allowed — a row repeated k times is ``DynamicCache.batch_repeat_interleave``, one
kept out of k is ``batch_select_indices``; the engine does both with one ``batch_select_indices``
over the repeated index), the token each new row feeds, each request's generated ids so far and
which requests are done. Everything the engine keeps per row (KV cache rows, attention mask,
positions, the method's hooks, the amateur's rows) follows ``rows``.

Scores: a search gets the method's contrasted next-token scores per (request, slot) from
``score(logits, spans)`` (the engine's ``combine`` → APC → warpers, exactly what a plain decode
picks from), so beams and look-ahead work with every method.

* :class:`BeamSearch` — Hugging Face beam search (transformers 5.24
  ``GenerationMixin._beam_search`` and helpers, ``generation/utils.py``: top ``2·num_beams``
  continuations of ``log_softmax(scores) + beam score`` over all beams, finished hypotheses
  scored ``Σ log p / length^length_penalty``, ``early_stopping`` True / False / ``"never"`` with
  the same heuristics). ``length_norm="generated"`` (5.24: the length counts generated tokens,
  EOS included) or ``"total"`` (transformers 4.29, OPERA's vendored copy,
  ``beam_search.py:889`` ``sum_logprobs / hyp.shape[-1] ** length_penalty``: prompt + generated
  ids, EOS not included; its early-stop heuristic ``is_done`` likewise uses the total length) or
  ``"total_bos"`` (the same 4.29 rule when ``generate`` got ``inputs_embeds`` only — LAVIS's
  InstructBLIP — so that ``input_ids`` start as one BOS: the length is 1 + generated, EOS not
  included; ``shikiw/OPERA transformers-4.29.2/src/transformers/generation/utils.py:548-550,584-594``).
  ``processors`` (the method's repetition penalty / no-repeat-n-gram, :mod:`vcdflow.decoding.processors`)
  apply to each beam's log-probs over that beam's own ids before the beam score is added, as
  transformers' ``beam_search`` does.
  The 4.29 bookkeeping otherwise differs from 5.24 only at ``max_new_tokens`` (4.29 finalises the
  running beams, 5.24 the top candidates of the last step); we follow 5.24 in both modes.
* :class:`ContrastiveSearch` — look-ahead: the top-k candidates of the method's scores are
  forwarded as k rows of the request (its cache repeated k times), the best
  ``(1−α)·p − α·max_j cos(h_cand, H_j)`` is kept with its cache row and logits (no extra
  forward), as HF's contrastive search (``_ranking_fast``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .hooks import DecodeHooks

#: ``score(step, logits[R, V], spans) -> scores [len(spans), V]``: the method's next-token scores of each
#: span = (request, slot, first row, n rows) of consecutive rows (all branches of one slot)
Scorer = Callable[[torch.Tensor, list], torch.Tensor]


@dataclass
class Layout:
    """The engine's live rows when a search is asked to choose: ``request[k]``, ``branch[k]``,
    ``slot[k]`` of row k; ``tokens[r]`` request r's generated ids; ``limits[r]`` its
    ``max_new_tokens``; ``eos`` the stop ids; ``prompt_len[r]`` its original branch's prompt length."""

    request: list[int]
    branch: list[int]
    slot: list[int]
    tokens: list[list[int]]
    limits: list[int]
    eos: set
    prompt_len: list[int]

    def spans(self) -> list[tuple[int, int, int, int]]:
        """Consecutive (request, slot, first row, n rows) runs."""
        out: list[list[int]] = []
        for k, (r, s) in enumerate(zip(self.request, self.slot)):
            if out and out[-1][0] == r and out[-1][1] == s:
                out[-1][3] += 1
            else:
                out.append([r, s, k, 1])
        return [tuple(x) for x in out]


@dataclass
class Choice:
    """A search's decision at one step (see the module docstring). ``rows``: the next forward's
    rows as indices into the current rows; ``slot``/``next_ids``: slot and input token of each new
    row; ``tokens``: request → its generated ids now (replaces the engine's list; the best beam's
    for a beam search); ``done``: request → finish reason ("eos" | "length")."""

    rows: list[int]
    slot: list[int]
    next_ids: list[int]
    tokens: dict = field(default_factory=dict)
    done: dict = field(default_factory=dict)
    #: rollback: new row index → the generated ids that row re-feeds from its prompt (its
    #: earlier generated columns are masked out, its positions restart after the prompt; other
    #: rows of the batch are unaffected); ``next_ids`` is ignored for those rows
    replay: dict | None = None


def expand(layout: Layout, picks: Sequence[tuple[int, int, int]]) -> tuple[list[int], list[int]]:
    """Rows for new slots: ``picks`` = (request, old slot, new slot) in the new row order → (row
    indices into the current rows: all branches of each old slot, slot of each new row)."""
    where: dict[tuple[int, int], list[int]] = {}
    for k, (r, s) in enumerate(zip(layout.request, layout.slot)):
        where.setdefault((r, s), []).append(k)
    rows, slots = [], []
    for r, old, new in picks:
        for k in where[(r, old)]:
            rows.append(k)
            slots.append(new)
    return rows, slots


def _choice(layout: Layout, picks, feed, tokens, done) -> Choice:
    """A :class:`Choice` from new slots ``picks`` (see :func:`expand`) and their input tokens."""
    rows, slot = expand(layout, picks)
    n_br: dict[tuple[int, int], int] = {}
    for r, s in zip(layout.request, layout.slot):
        n_br[(r, s)] = n_br.get((r, s), 0) + 1
    ids: list[int] = []
    for (r, old, _), t in zip(picks, feed):
        ids += [int(t)] * n_br[(r, old)]
    return Choice(rows=rows, slot=slot, next_ids=ids, tokens=tokens, done=done)


# --- beam search ---------------------------------------------------------------------------------
LENGTH_NORMS = ("generated", "total", "total_bos")


def check_beam_args(num_beams, length_penalty, early_stopping, length_norm) -> None:
    if not isinstance(num_beams, int) or isinstance(num_beams, bool) or num_beams < 1:
        raise ValueError(f"num_beams must be a positive integer, got {num_beams!r}")
    if not isinstance(length_penalty, (int, float)) or isinstance(length_penalty, bool):
        raise ValueError(f"length_penalty must be a number, got {length_penalty!r}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if length_norm not in LENGTH_NORMS:
        raise ValueError(f"length_norm must be one of {', '.join(LENGTH_NORMS)}, got {length_norm!r}")


@dataclass
class _Beams:
    """One request's beam state (5.24's per-batch-item tensors, as lists)."""

    running: list[list[int]]  # num_beams generated-id lists
    running_scores: torch.Tensor  # [num_beams]
    finished: list[tuple[float, list[int], bool]] = field(default_factory=list)  # (score, ids, eos)
    open: bool = True  # is_early_stop_heuristic_unsatisfied
    started: bool = False


class BeamSearch:
    """HF beam search over the method's scores (see the module docstring). ``transform(step, lp,
    layout, spans)`` (optional) changes the per-beam log-probs [n_spans, V] before the beam score is
    added (OPERA's candidate penalty, Li et al.'s CD re-weighting)."""

    #: candidates kept per step = pool_factor · num_beams; None: transformers 5's
    #: max(2, 1 + number of EOS ids)
    pool_factor: int | None = None

    def __init__(
        self,
        score: Scorer,
        num_beams: int,
        length_penalty: float = 1.0,
        early_stopping: bool | str = False,
        length_norm: str = "generated",
        log_probs: bool = True,
        processors: dict | None = None,
        hooks=None,
    ):
        check_beam_args(num_beams, length_penalty, early_stopping, length_norm)
        self.score = score
        self.k = int(num_beams)
        self.lp = float(length_penalty)
        self.early = early_stopping
        self.norm = length_norm
        self.log_probs = log_probs
        self.processors = processors
        self.hooks = hooks
        self.state: dict[int, _Beams] = {}

    # lengths ---------------------------------------------------------------------------------------
    def _prompt_len(self, prompt_len: int) -> int:
        """The prompt part of a 4.29 total length (``total_bos``: the one BOS of ``inputs_embeds``)."""
        return 1 if self.norm == "total_bos" else prompt_len

    def _length(self, n_generated: int, eos: bool, prompt_len: int) -> int:
        if self.norm == "generated":
            return n_generated  # 5.24: cur_len + 1 − prompt_len, the EOS counted
        return (
            self._prompt_len(prompt_len) + n_generated - (1 if eos else 0)
        )  # 4.29: hyp = prompt + ids, no EOS

    def process(self, lp: torch.Tensor, r: int, beams: list[list[int]]) -> torch.Tensor:
        """The method's processors on request ``r``'s per-beam log-probs [n, V], each row over its
        beam's ids (``beams[i]``: the generated ids of row i)."""
        if not self.processors:
            return lp
        from .processors import prefix_ids, process_ids

        pre = prefix_ids(self.hooks, r, self.processors["context"])
        return process_ids(
            lp, [pre + list(b) for b in beams], self.processors["repetition"], self.processors["ngram"]
        )

    def scores(self, step: int, logits: torch.Tensor, layout: Layout, spans) -> torch.Tensor:
        s = self.score(step, logits, spans).float()
        return torch.log_softmax(s, dim=-1) if self.log_probs else s

    def candidates(self, lp: torch.Tensor, running: torch.Tensor, keep: int, first: bool, rows: list[int]):
        """The ``keep`` best continuations over all beams: (scores [keep] descending, flat indices
        beam·V + token). HF: top-k of per-beam log-probs + beam score. ``rows``: each beam's
        original-branch row in the current forward (for searches that read more than ``lp``)."""
        return torch.topk((lp + running[:, None]).reshape(-1), k=keep)

    def advance(
        self,
        st: _Beams,
        top_lp: torch.Tensor,
        beam: list[int],
        tok: list[int],
        layout: Layout,
        r: int,
        runnable: list[bool] | None = None,
    ):
        """One step of HF's bookkeeping for request ``r`` given its ``keep`` best continuations
        (scores ``top_lp`` descending, source beam ``beam`` and token ``tok`` of each): finished
        hypotheses updated, running beams chosen, stopping decided. ``runnable`` (optional): which
        continuations may become running beams (OPERA: only forwarded candidates); fewer than
        ``num_beams`` running beams are kept when fewer qualify. Returns (indices of the new running
        beams into the continuations, or None when the request is done; finish reason; the best
        beam's ids / the final ids)."""
        K = self.k
        keep = len(tok)
        cur = len(st.running[0])  # generated so far
        seqs = [st.running[b] + [t] for b, t in zip(beam, tok)]
        n_gen = cur + 1
        hits = [t in layout.eos or n_gen >= layout.limits[r] for t in tok]
        # f. finished hypotheses (only the top K candidates; none once the request is closed)
        for j in range(min(K, keep)):
            if not hits[j] or not st.open:
                continue
            if self.early is True and len(st.finished) >= K:
                continue
            eos = tok[j] in layout.eos
            length = self._length(n_gen, eos, layout.prompt_len[r])
            sc = float(top_lp[j]) / (length**self.lp)
            st.finished.append((sc, seqs[j], eos))
        # keep the best K (stable: earlier entries first among equals, like topk over the concat)
        order = sorted(range(len(st.finished)), key=lambda i: -st.finished[i][0])[:K]
        st.finished = [st.finished[i] for i in sorted(order, key=lambda i: (-st.finished[i][0], i))]
        # e. running beams for the next step: the best K candidates that did not stop
        bad = [h or (runnable is not None and not runnable[j]) for j, h in enumerate(hits)]
        run_lp = top_lp + torch.tensor([-1e9 if x else 0.0 for x in bad])
        nxt = torch.topk(run_lp, k=min(K, keep)).indices.tolist()
        if runnable is not None:
            nxt = [j for j in nxt if not bad[j]] or nxt[:1]
        st.running = [seqs[j] for j in nxt]
        st.running_scores = run_lp[nxt]
        # g. stopping: heuristic, all finished with early stopping, no valid continuation
        n_now = cur + 1
        if st.open and len(st.finished) >= K:
            if self.early == "never" and self.lp > 0:
                best_len = layout.limits[r]
            else:
                best_len = n_now
            if self.norm != "generated":
                best_len += self._prompt_len(layout.prompt_len[r])
            best = float(st.running_scores[0]) / (best_len**self.lp)
            worst = min(f[0] for f in st.finished)
            st.open = best > worst
        all_done = len(st.finished) >= K and self.early is True
        if not st.open or all_done or all(bad) or n_now >= layout.limits[r]:
            best = st.finished[0] if st.finished else (float(st.running_scores[0]), st.running[0], False)
            ids = list(best[1])
            if best[2]:
                return None, "eos", ids[:-1]
            return None, "length", ids
        return nxt, None, list(st.running[0])

    def step(self, step: int, logits: torch.Tensor, layout: Layout) -> Choice:
        spans = layout.spans()
        lp_all = self.scores(step, logits, layout, spans)
        by_req: dict[int, list[int]] = {}
        for i, (r, s, _, _) in enumerate(spans):
            by_req.setdefault(r, []).append(i)
        picks: list[tuple[int, int, int]] = []
        next_ids: list[int] = []
        tokens: dict[int, list[int]] = {}
        done: dict[int, str] = {}
        K = self.k
        for r, idx in by_req.items():
            st = self.state.get(r)
            lp = lp_all[idx]  # [n_slots, V]
            V = lp.shape[-1]
            rows = [spans[i][2] for i in idx]  # each slot's original-branch row
            first = st is None
            if first:  # first step: one row = the prompt
                st = _Beams(
                    running=[[] for _ in range(K)], running_scores=torch.tensor([0.0] + [-1e9] * (K - 1))
                )
                self.state[r] = st
                lp = self.process(lp[:1], r, [[]]).expand(K, V)
                rows = rows[:1] * K
            else:
                lp = self.process(lp, r, st.running)
            n_eos = len(layout.eos)
            keep = min((self.pool_factor or max(2, 1 + n_eos)) * K, lp.numel())
            top_lp, top_i = self.candidates(lp, st.running_scores.to(lp.device), keep, first, rows)
            beam = (top_i // V).tolist()
            tok = (top_i % V).tolist()
            nxt, why, ids = self.advance(st, top_lp.cpu(), beam, tok, layout, r)
            tokens[r] = ids
            if nxt is None:
                done[r] = why
                continue
            slots = [spans[i][1] for i in idx]
            for new, j in enumerate(nxt):
                old = slots[beam[j]] if len(slots) > 1 else slots[0]
                picks.append((r, old, new))
                next_ids.append(tok[j])
        return _choice(layout, picks, next_ids, tokens, done)


# --- look-ahead candidates: contrastive search -------------------------------------------------
class FinalHidden(DecodeHooks):
    """Forward hooks (a :class:`~vcdflow.decoding.hooks.DecodeHooks`) on the final norm N_f: the
    final-layer hidden states HF's ``output_hidden_states[-1]`` returns. Keeps ``last`` [R, D] (the
    last position of every row of the latest forward) and per request the context H: the
    unpadded prefill states of its original branch, then one state per chosen token (``push``).
    Padding is read from the 2-D attention mask the decoder stack receives (a pre-hook on
    ``adapter.text_model()``); with shared-prefix prefill the prefix rows' states are expanded with
    the rows (``select``) and the suffix states appended."""

    def __init__(self):
        self.last: torch.Tensor | None = None
        self.contexts: dict[int, torch.Tensor] = {}
        self._handles: list = []
        self._phase = None
        self._rows = None
        self._mask = None
        self._pre: list | None = None

    # DecodeHooks protocol
    def start(self, adapter, seqs, tokens) -> None:
        super().start(adapter, seqs, tokens)

        def pre_hook(module, args, kwargs):
            self._mask = kwargs.get("attention_mask")

        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            self.last = h[:, -1, :].float()
            if self._phase not in ("prefill", "prefix", "suffix"):
                return
            m = self._mask
            if not isinstance(m, torch.Tensor) or m.dim() != 2 or m.shape[0] != h.shape[0]:
                raise RuntimeError("FinalHidden needs the 2-D attention mask of the prefill")
            valid = m[:, -h.shape[1] :].bool()
            states = [h[k][valid[k]].float() for k in range(h.shape[0])]
            if self._phase == "prefix":
                self._pre = states
                return
            for k, (r, b) in enumerate(zip(self._rows.request, self._rows.branch)):
                if b == 0:
                    head = self._pre[k] if self._phase == "suffix" else states[k][:0]
                    self.contexts[r] = torch.cat([head, states[k]], dim=0)
            self._pre = None

        self._handles = [
            adapter.text_model().register_forward_pre_hook(pre_hook, with_kwargs=True),
            adapter.final_norm().register_forward_hook(hook),
        ]

    def before_forward(self, phase, rows) -> None:
        self._phase, self._rows = phase, rows

    def select(self, index: torch.Tensor) -> None:
        if self._pre is not None:
            self._pre = [self._pre[i] for i in index.tolist()]
        if self.last is not None:
            self.last = self.last.index_select(0, index.to(self.last.device))

    def finish(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # what ContrastiveSearch reads
    def last_hidden(self, rows: Sequence[int]) -> torch.Tensor:
        return self.last[torch.tensor(list(rows), device=self.last.device)]

    def context(self, r: int) -> torch.Tensor:
        return self.contexts[r]

    def push(self, r: int, h: torch.Tensor) -> None:
        self.contexts[r] = torch.cat([self.contexts[r], h.view(1, -1).to(self.contexts[r].dtype)], dim=0)


class ContrastiveSearch:
    """Su et al.'s contrastive search as HF implements it (module docstring). ``capture`` (a
    :class:`FinalHidden`): ``last_hidden(rows)`` the final-layer state of the last position of the
    given current rows [n, D]; ``context(r)`` request r's context states H ([T, D]: its prompt
    positions without padding, then one per chosen token); ``push(r, h)`` appends a chosen state.

    Call 0 (prefill logits) forwards the top-k candidates of each request as k slots; every later
    call ranks the forwarded candidates, keeps the best slot (its cache row and logits) and
    forwards that slot's next top-k."""

    def __init__(self, score: Scorer, penalty_alpha: float, top_k: int, capture):
        self.score = score
        self.alpha = float(penalty_alpha)
        self.k = int(top_k)
        self.capture = capture
        self.cands: dict[int, tuple[torch.Tensor, list[int]]] = {}  # r -> (probs [k], ids)

    def step(self, step: int, logits: torch.Tensor, layout: Layout) -> Choice:
        spans = layout.spans()
        by_req: dict[int, list[int]] = {}
        for i, (r, s, _, _) in enumerate(spans):
            by_req.setdefault(r, []).append(i)
        tokens, done = {}, {}
        chosen_span: dict[int, int] = {}
        for r, idx in by_req.items():
            if r not in self.cands:  # prefill logits: no candidate forwarded yet
                chosen_span[r] = idx[0]
                continue
            probs, ids = self.cands.pop(r)
            first_rows = [spans[i][2] for i in idx]  # the original branch of each candidate slot
            h = self.capture.last_hidden(first_rows)  # [k, D]
            H = self.capture.context(r)  # [T, D]
            hn = h / h.norm(dim=-1, keepdim=True)
            Hn = H / H.norm(dim=-1, keepdim=True)
            pen = (hn @ Hn.T).max(dim=-1).values  # [k]
            sc = (1.0 - self.alpha) * probs.to(pen.device) - self.alpha * pen
            best = int(sc.argmax())
            t = ids[best]
            self.capture.push(r, h[best])
            if t in layout.eos:
                done[r] = "eos"
                tokens[r] = list(layout.tokens[r])
                continue
            tokens[r] = list(layout.tokens[r]) + [t]
            if len(tokens[r]) >= layout.limits[r]:
                done[r] = "length"
                continue
            chosen_span[r] = idx[best]
        live = [r for r in by_req if r in chosen_span]
        picks, feed = [], []
        if live:
            spans_live = [spans[chosen_span[r]] for r in live]
            s = self.score(step, logits, spans_live).float()
            p = torch.softmax(s, dim=-1)
            top_p, top_i = torch.topk(p, k=min(self.k, p.shape[-1]), dim=-1)
            for n, r in enumerate(live):
                ids = top_i[n].tolist()
                self.cands[r] = (top_p[n].detach(), ids)
                old = spans[chosen_span[r]][1]
                for j, t in enumerate(ids):
                    picks.append((r, old, j))
                    feed.append(t)
        return _choice(layout, picks, feed, tokens, done)


__all__ = [
    "BeamSearch",
    "Choice",
    "ContrastiveSearch",
    "FinalHidden",
    "LENGTH_NORMS",
    "Layout",
    "check_beam_args",
    "expand",
]
