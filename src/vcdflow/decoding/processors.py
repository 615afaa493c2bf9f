"""E13: Hugging Face logits processors for the chooser — repetition penalty and no-repeat-n-gram,
with ``transformers``' semantics, over each request's prompt **and** generated ids.

* :func:`repetition_penalty` = ``RepetitionPenaltyLogitsProcessor(θ)``: for every id that occurs in
  the row's ids (prompt included — for a VLM that includes the image placeholder ids, as HF's
  ``input_ids`` do), ``s ← s / θ if s > 0 else s · θ`` (once per distinct id).
* :func:`no_repeat_ngram` = ``NoRepeatNGramLogitsProcessor(n)``: −inf for every token that would
  complete an n-gram already present in the row's ids.

A method applies them at the end of its ``combine`` (:func:`apply_processors`). The engine then
applies the plausibility mask (APC) and the warpers. Running the processors before the APC mask
gives the same scores as running them after it: APC sets −inf where the *original branch's logits*
fall below its cutoff, whatever the scores are, and both processors map −inf to −inf. So this is
exactly HF's order (processors after the method's own scores, then warpers). The ids come from the
hook seam: ``state.hooks.seqs[r][0].input_ids`` (prompt, original branch) + ``state.hooks.tokens[r]``
(generated), so a method using them needs ``forward_hooks`` (a plain ``DecodeHooks()`` will do).
"""

from __future__ import annotations

from typing import Sequence

import torch


def history(state) -> list[list[int]]:
    """Per member of ``state``'s group: the original branch's prompt ids + the generated ids."""
    hooks = state.hooks
    if hooks is None:
        raise RuntimeError("logits processors need the request's ids: the method must return forward hooks")
    return [hooks.seqs[r][0].input_ids.tolist() + list(hooks.tokens[r]) for r in state.requests]


def repetition_penalty(scores: torch.Tensor, ids: Sequence[Sequence[int]], theta: float) -> torch.Tensor:
    """HF ``RepetitionPenaltyLogitsProcessor``: scores [G, V], ids per row → new scores."""
    if theta == 1.0:
        return scores
    out = scores.clone()
    V = scores.shape[-1]
    for g, row in enumerate(ids):
        u = torch.tensor(sorted({int(t) for t in row if 0 <= int(t) < V}), dtype=torch.long, device=scores.device)
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
        prefix = tuple(row[len(row) - n + 1:]) if n > 1 else ()
        banned = {row[i + n - 1] for i in range(len(row) - n + 1) if tuple(row[i:i + n - 1]) == prefix}
        banned = [t for t in banned if 0 <= t < V]
        if banned:
            out[g, torch.tensor(banned, dtype=torch.long, device=scores.device)] = -float("inf")
    return out


def apply_processors(scores: torch.Tensor, state, repetition: float = 1.0, ngram: int = 0) -> torch.Tensor:
    """Repetition penalty θ = ``repetition`` then no-repeat-n-gram ``ngram`` (HF's processor order
    in ``GenerationMixin._get_logits_processor``) on a group's scores [G, V]."""
    if repetition == 1.0 and ngram <= 0:
        return scores
    ids = history(state)
    scores = repetition_penalty(scores, ids, float(repetition))
    return no_repeat_ngram(scores, ids, int(ngram))


def check_processor_params(method: str, p) -> None:
    """``repetition_penalty`` > 0 and ``no_repeat_ngram_size`` ≥ 0, naming the parameter."""
    if "repetition_penalty" in p and not float(p["repetition_penalty"]) > 0:
        raise ValueError(f"parameter 'repetition_penalty' of method {method!r} must be > 0, "
                         f"got {p['repetition_penalty']}")
    if "no_repeat_ngram_size" in p and int(p["no_repeat_ngram_size"]) < 0:
        raise ValueError(f"parameter 'no_repeat_ngram_size' of method {method!r} must be >= 0, "
                         f"got {p['no_repeat_ngram_size']}")
