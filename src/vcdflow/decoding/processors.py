"""Hugging Face logits processors for the chooser — repetition penalty and no-repeat-n-gram,
with ``transformers``' semantics, over each request's ids.

* :func:`repetition_penalty` = ``RepetitionPenaltyLogitsProcessor(θ)``: for every id that occurs in
  the row's ids, ``s ← s / θ if s > 0 else s · θ`` (once per distinct id).
* :func:`no_repeat_ngram` = ``NoRepeatNGramLogitsProcessor(n)``: −inf for every token that would
  complete an n-gram already present in the row's ids.

**Which ids** (parameter ``repetition_context``): ``"prompt"`` (default) — the prompt's ids **and**
the generated ids, as ``generate(input_ids=…)`` sees them (for a VLM that includes the image
placeholder ids, as HF's ``input_ids`` do); ``"generated"`` — one BOS id and the generated ids:
what LAVIS's InstructBLIP ``generate`` passes on, because it calls the LLM's ``generate`` with
``inputs_embeds`` only and transformers then starts ``input_ids`` as a single BOS
(``shikiw/OPERA transformers-4.29.2/src/transformers/generation/utils.py:548-550,584-594``; the
same in the 4.36.2 copies of BillChan226/HALC and mengchuang123/VASparse-github), so the prompt's
words are never penalised.

**Where they apply.** A method declares them through its parameters ``repetition_penalty``,
``no_repeat_ngram_size`` and ``repetition_context`` (:meth:`vcdflow.decoding.methods.base.Method.processors`);
the engine applies them (:func:`vcdflow.decoding.engine.method_scorer`) right after ``combine``,
then the plausibility mask (APC) and the warpers. Running the processors before the APC mask gives
the same scores as running them after it: APC sets −inf where the *original branch's logits* fall
below its cutoff, whatever the scores are, and both processors map −inf to −inf. So this is exactly
HF's order in greedy and sampling decoding (processors on the method's scores, then warpers). In
**beam search** transformers applies them to the log-softmax of the scores, per beam over that
beam's own ids, before the beam score is added (``beam_search``: ``log_softmax`` then
``logits_processor(input_ids, next_token_scores)``, transformers 4.29.2 ``utils.py:3003-3010``; 4.36.2
``dola_beam_search`` likewise): :class:`vcdflow.decoding.beams.BeamSearch` does the same
(``processors``), and so does OPERA's search. The ids come from the hook seam:
``state.hooks.seqs[r][0].input_ids`` (prompt, original branch) and ``state.hooks.tokens[r]`` (the
generated ids; a beam's own ids in beam search), so the engine gives a method that uses them plain
:class:`~vcdflow.decoding.hooks.DecodeHooks` when it has no hooks of its own.
"""

from __future__ import annotations

from typing import Sequence

import torch


#: values of ``repetition_context`` (see the module docstring)
CONTEXTS = ("prompt", "generated")


def prefix_ids(hooks, r: int, context: str = "prompt") -> list[int]:
    """The ids before request ``r``'s generated ids that the processors see: its original branch's
    prompt ids (``"prompt"``) or one BOS id (``"generated"``: LAVIS ``generate`` with
    ``inputs_embeds``)."""
    if hooks is None:
        raise RuntimeError("logits processors need the request's ids: the method must return forward hooks")
    if context == "generated":
        bos = getattr(hooks.adapter.tokenizer, "bos_token_id", None)
        return [] if bos is None else [int(bos)]
    return hooks.seqs[r][0].input_ids.tolist()


def history(state, context: str = "prompt") -> list[list[int]]:
    """Per member of ``state``'s group: :func:`prefix_ids` + the generated ids."""
    hooks = state.hooks
    return [prefix_ids(hooks, r, context) + list(hooks.tokens[r]) for r in state.requests]


def repetition_penalty(scores: torch.Tensor, ids: Sequence[Sequence[int]], theta: float) -> torch.Tensor:
    """HF ``RepetitionPenaltyLogitsProcessor``: scores [G, V], ids per row → new scores."""
    if theta == 1.0:
        return scores
    out = scores.clone()
    V = scores.shape[-1]
    for g, row in enumerate(ids):
        u = torch.tensor(
            sorted({int(t) for t in row if 0 <= int(t) < V}), dtype=torch.long, device=scores.device
        )
        if u.numel() == 0:
            continue
        s = out[g].index_select(0, u)
        out[g, u] = torch.where(s < 0, s * theta, s / theta)
    return out


def no_repeat_ngram(scores: torch.Tensor, ids: Sequence[Sequence[int]], n: int) -> torch.Tensor:
    """HF ``NoRepeatNGramLogitsProcessor``: ban tokens completing an n-gram seen in the row's ids."""
    if n <= 0:
        return scores
    out = scores.clone()
    V = scores.shape[-1]
    for g, row in enumerate(ids):
        row = [int(t) for t in row]
        if len(row) < n:
            continue
        prefix = tuple(row[len(row) - n + 1 :]) if n > 1 else ()
        banned = {row[i + n - 1] for i in range(len(row) - n + 1) if tuple(row[i : i + n - 1]) == prefix}
        banned = [t for t in banned if 0 <= t < V]
        if banned:
            out[g, torch.tensor(banned, dtype=torch.long, device=scores.device)] = -float("inf")
    return out


def apply_processors(
    scores: torch.Tensor, state, repetition: float = 1.0, ngram: int = 0, context: str = "prompt"
) -> torch.Tensor:
    """Repetition penalty θ = ``repetition`` then no-repeat-n-gram ``ngram`` (HF's processor order
    in ``GenerationMixin._get_logits_processor``) on a group's scores [G, V]."""
    if repetition == 1.0 and ngram <= 0:
        return scores
    return process_ids(scores, history(state, context), repetition, ngram)


def process_ids(scores: torch.Tensor, ids, repetition: float = 1.0, ngram: int = 0) -> torch.Tensor:
    """Both processors on scores [G, V] given each row's ids."""
    scores = repetition_penalty(scores, ids, float(repetition))
    return no_repeat_ngram(scores, ids, int(ngram))


def check_processor_params(method: str, p) -> None:
    """``repetition_penalty`` > 0 and ``no_repeat_ngram_size`` ≥ 0, naming the parameter."""
    if "repetition_penalty" in p and not float(p["repetition_penalty"]) > 0:
        raise ValueError(
            f"parameter 'repetition_penalty' of method {method!r} must be > 0, got {p['repetition_penalty']}"
        )
    if "repetition_context" in p and p["repetition_context"] not in CONTEXTS:
        raise ValueError(
            f"parameter 'repetition_context' of method {method!r} must be one of {', '.join(CONTEXTS)}, "
            f"got {p['repetition_context']!r}"
        )
    if "no_repeat_ngram_size" in p and int(p["no_repeat_ngram_size"]) < 0:
        raise ValueError(
            f"parameter 'no_repeat_ngram_size' of method {method!r} must be >= 0, "
            f"got {p['no_repeat_ngram_size']}"
        )
