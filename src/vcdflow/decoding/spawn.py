"""Mid-decode branch spawning.

When a method's trigger fires for a request at step t (HALC: an object noun is about to be
emitted), :func:`spawn_logits` builds NEW branches on the spot — e.g. the same prompt with a crop
of the image —, prefills each with the request's full current prefix (its prompt as encoded for
that branch, then the ids generated so far, teacher-forced) and returns their next-token logits.
The branches are thrown away afterwards: nothing is added to the decode's KV cache or rows.

Call it from ``combine`` with ``state.contexts[k].adapter``, the generated ids
``state.hooks.tokens[state.requests[k]]`` and ``hooks=state.hooks``: all rows that fire in one
step go into one batched forward (left-padded, no cache, no prefix sharing). The method's forward
hooks see the spawned forward too (their torch hooks sit on the same layers), so every attribute
they keep is restored afterwards (:func:`suspended`): the engine's next ``select`` then finds
the state of the decode's own rows, not of the spawned ones.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import replace
from typing import Sequence

import torch

from .types import Branch


def teacher_forced(adapter, enc, generated: Sequence[int]):
    """``enc`` (an :class:`~vcdflow.models.adapters.Encoded` prompt) followed by the ids
    ``generated``: what the decode's cache holds for that prompt after ``len(generated)`` steps.
    Per-token extras (``adapter.TOKEN_EXTRAS``) are extended with 0 (text) for the new ids."""
    gen = torch.tensor([int(t) for t in generated], dtype=enc.input_ids.dtype)
    if not len(gen):
        return enc
    extras = {}
    for k, v in enc.extras.items():
        if k in getattr(adapter, "TOKEN_EXTRAS", ()) and v.shape[-1] == enc.length:
            v = torch.cat([v, v.new_zeros(v.shape[:-1] + (len(gen),))], dim=-1)
        extras[k] = v
    return replace(enc, input_ids=torch.cat([enc.input_ids, gen]), extras=extras)


@contextlib.contextmanager
def suspended(hooks):
    """Keep ``hooks``' attributes as they are across a forward that is not the decode's own:
    every attribute is restored afterwards (dicts and lists as shallow copies)."""
    if hooks is None:
        yield
        return
    saved = {k: (copy.copy(v) if isinstance(v, (dict, list)) else v) for k, v in vars(hooks).items()}
    try:
        yield
    finally:
        for k, v in saved.items():
            cur = getattr(hooks, k, None)
            if isinstance(v, dict) and isinstance(cur, dict):
                cur.clear()
                cur.update(v)
            elif isinstance(v, list) and isinstance(cur, list) and k != "_handles":
                cur[:] = v
            else:
                setattr(hooks, k, v)


def spawn_logits(
    adapter,
    branches: Sequence[Branch],
    generated: Sequence[Sequence[int]],
    *,
    rng: torch.Generator | None = None,
    hooks=None,
    chunk: int | None = None,
) -> torch.Tensor:
    """Next-token logits [len(branches), V] (float32) of each new branch ``branches[i]`` after
    its prompt and the teacher-forced ids ``generated[i]``; one left-padded forward per ``chunk``
    rows (default: all), no KV cache kept. ``hooks``: the method's forward hooks, kept unchanged."""
    if len(branches) != len(generated):
        raise ValueError(f"spawn_logits: {len(branches)} branches but {len(generated)} prefixes")
    if not branches:
        return torch.empty(0)
    encs = [adapter.encode(b, rng) for b in branches]
    rows = [teacher_forced(adapter, e, g) for e, g in zip(encs, generated)]
    # a generated id equal to the image placeholder is an ordinary token (as in the decode's own
    # steps): hidden from the placeholder scatter and the rope layout, embedded as a token
    img_id = getattr(adapter, "image_token_id", None)
    safe = []
    for e, r in zip(encs, rows):
        ids = r.input_ids.clone()
        if img_id is not None:
            tail = ids[e.length :]
            tail[tail == img_id] = int(adapter.pad_token_id)
        safe.append(replace(r, input_ids=ids))
    step = chunk or len(rows)
    out = []
    with suspended(hooks), torch.no_grad():
        for c in range(0, len(rows), step):
            part, part_safe = rows[c : c + step], safe[c : c + step]
            ids, mask = adapter.collate(part)
            ids_safe, _ = adapter.collate(part_safe)
            pos, _ = adapter.prefill_positions(ids_safe, mask, part_safe)
            embeds = adapter.prefill_embeds(ids_safe, part_safe)
            fix = ids != ids_safe
            if bool(fix.any()):
                embeds = torch.where(fix.unsqueeze(-1), adapter.embed_tokens(ids).to(embeds.dtype), embeds)
            logits, _ = adapter.forward(embeds, mask, pos, None)
            out.append(logits)
    return torch.cat(out)


__all__ = ["spawn_logits", "suspended", "teacher_forced"]
