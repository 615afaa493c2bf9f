"""``olm``: output-layer modification (force "Yes" when yes/no are close), a cd_rethink control.

Yin, Si, Wang, "The Mirage of Performance Gains", arXiv 2504.10020; ``ustc-hyin/cd_rethink@4303279``.

At every step, with p = softmax(ℓ) of the single (original) branch and y / n the ids of the
answer words "Yes" / "No"::

    if p_y + p_n > 0.2 and |p_y − p_n| < 0.5:   choose y          (force "Yes")
    else:                                       choose argmax ℓ

(``inference/spurious_utils/olm_utils.py:124-139``: ``YES_INDEX = 3869`` = LLaMA "▁Yes",
``NO_INDEX = 1939`` = "▁No"; ``sum_prob > 0.2``, ``abs_diff < 0.5``). It only bites where yes/no
are likely, i.e. the first answer token of a POPE/MME question, and shows that shifting the
yes/no decision alone reproduces CD's POPE "gains". Official run: greedy
(``scripts/pope_infer_spurious.sh:30-32``: ``--temperature 0 --use-olm``), prompt
``"{question} Answer the question using a single word or phrase."``
(``inference/pope_infer_olm.py:59``).

Parameters: ``yes_word`` = "Yes", ``no_word`` = "No", ``min_sum`` = 0.2, ``max_diff`` = 0.5.
The ids are looked up per tokenizer as ``tokenizer.encode(word, add_special_tokens=False)``,
which must be ONE token (LLaMA's sentencepiece gives "▁Yes" = 3869, the official id; Qwen2's
BPE gives "Yes"); otherwise the request fails naming the word (per-request extras: the ids
are stored per request by ``prepare`` and read in ``combine`` through ``State.contexts``).

Divergence: the official code compares a batch-of-1 tensor (``if sum_prob > 0.2``); here the
rule is applied per request. With ``do_sample=True`` (not in the paper) a forced step emits y
and other steps sample from ℓ. Every family.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import torch

from ..types import InputError
from .base import Method


def single_token_id(tokenizer, word: str) -> int:
    """The id of ``word`` as the tokenizer encodes it alone; ``InputError`` unless one token."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        raise InputError(f"the answer word {word!r} is {len(ids)} tokens ({ids}) for this tokenizer, not one")
    return int(ids[0])


@dataclass(frozen=True)
class OLM(Method):
    name = "olm"
    defaults = MappingProxyType({"yes_word": "Yes", "no_word": "No", "min_sum": 0.2, "max_diff": 0.5})
    requires_image = False

    def prepare(self, items, runner):
        tok = runner.adapter.tokenizer
        try:
            ids = (
                single_token_id(tok, items[0].ctx.params["yes_word"]),
                single_token_id(tok, items[0].ctx.params["no_word"]),
            )
        except InputError as e:
            for it in items:
                it.fail(f"method 'olm': {e}")
            return
        for it in items:
            it.ctx.prepared["olm_ids"] = ids

    def combine(self, logits, step, state):
        ell = logits[..., 0, :]
        y, n = state.contexts[0].prepared["olm_ids"]
        p = torch.softmax(ell.float(), dim=-1)
        force = ((p[..., y] + p[..., n]) > float(state.params["min_sum"])) & (
            (p[..., y] - p[..., n]).abs() < float(state.params["max_diff"])
        )
        forced = torch.full_like(ell, -float("inf"))
        forced[..., y] = 0.0
        return torch.where(force.unsqueeze(-1), forced, ell)

    def plausibility(self, logits, step, state):
        return None
