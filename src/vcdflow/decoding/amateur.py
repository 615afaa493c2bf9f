"""A second (amateur) model decoding in lockstep with the expert.

:class:`AmateurStream` owns the amateur's adapter, its KV cache and its own chat template. The
engine (:func:`vcdflow.decoding.engine.decode_rows`) calls ``prefill(row_req, row_branch)`` after
the expert's prefill (one amateur row per expert row: a request's rows all read its one amateur
prompt), ``step(ids)`` after every expert step with the same input tokens, and ``select(index)``
whenever the expert's rows are re-indexed (finished requests dropped, beams reordered,
look-ahead candidates repeated). ``logits`` [R, V_a] are the amateur's last-position logits of
every row; ``combine`` sees them as ``state.amateur`` (the group's original-branch rows), cut with
the expert's to the shared vocabulary prefix min(V_e, V_a).

Amateur prompt per request: the request's original branch (same user text and system text) in
the amateur's own chat template, with the image when ``with_image`` (an LVLM amateur) and the
amateur can take one, else text-only; with ``last_token_only`` (Li et al.'s ``ignore_prefix``,
``XiangLi1999/ContrastiveDecoding`` ``text-generation/run_generation.py``: the student sees only
the last prompt token plus its own continuation) only the last token of that prompt.

The amateur is any model :func:`vcdflow.models.load_vlm` loads (a ``save_pretrained`` directory),
loaded once per (path, device, dtype) and kept (:func:`load_amateur`). The tokenizers must agree on
the shared id prefix: :func:`check_vocab` compares the token strings of ids < min(V_e, V_a) and
fails naming the first id that differs.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch

from .types import InputError

_LOADED: dict[tuple, Any] = {}


def load_amateur(path, expert_adapter):
    """The amateur VLM at ``path`` on the expert's device and dtype (cached)."""
    from vcdflow.models import load_vlm

    p = Path(str(path)).expanduser()
    if not p.exists():
        raise InputError(f"parameter 'amateur': no model directory {str(p)!r}")
    key = (str(p.resolve()), str(expert_adapter.device), str(expert_adapter.dtype))
    if key not in _LOADED:
        _LOADED[key] = load_vlm(p, device=expert_adapter.device, dtype=expert_adapter.dtype)
    return _LOADED[key]


def _vocab_size(adapter) -> int:
    return int(adapter.lm_head().weight.shape[0])


def check_vocab(expert, amateur) -> int:
    """Shared vocabulary prefix size; ``InputError`` when a token of that prefix differs."""
    n = min(_vocab_size(expert), _vocab_size(amateur), len(expert.tokenizer), len(amateur.tokenizer))
    a = expert.tokenizer.convert_ids_to_tokens(list(range(n)))
    b = amateur.tokenizer.convert_ids_to_tokens(list(range(n)))
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            raise InputError(
                f"parameter 'amateur': the tokenizers differ at id {i} ({x!r} vs {y!r}); "
                f"expert and amateur must share their vocabulary prefix"
            )
    return n


class AmateurStream:
    """The amateur's rows and cache for one decode call (see the module docstring)."""

    def __init__(self, vlm, last_token_only: bool = False, with_image: bool = True):
        self.vlm = vlm
        self.adapter = vlm.adapter
        self.last_token_only = bool(last_token_only)
        self.with_image = bool(with_image)
        self.encoded: list = []
        self.logits: torch.Tensor | None = None

    def encode(self, branches: Sequence[Any]) -> None:
        """One amateur prompt per request from its original branch."""
        ad = self.adapter
        self.encoded = []
        for b in branches:
            br = replace(b, pixel_fn=None, image_token_scale=None, name="amateur", qformer_prompt=None)
            if not self.with_image or ad.image_token_id is None:
                br = replace(br, image=None)
            e = ad.encode(br)
            if self.last_token_only:
                from vcdflow.models.adapters import Encoded

                e = Encoded(input_ids=e.input_ids[-1:], text=e.text)
            self.encoded.append(e)

    def prefill(self, row_req: Sequence[int], row_branch: Sequence[int]) -> None:
        ad = self.adapter
        rows = [self.encoded[r] for r in row_req]
        ids, mask = ad.collate(rows)
        pos, self.next_pos = ad.prefill_positions(ids, mask, rows)
        self.cache = ad.new_cache()
        embeds = ad.prefill_embeds(ids, rows)
        self.logits, _ = ad.forward(embeds, mask, pos, self.cache)
        self.mask = mask

    def step(self, step_ids: torch.Tensor) -> None:
        ad = self.adapter
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        pos = ad.step_positions(self.next_pos)
        self.next_pos = self.next_pos + 1
        ids = step_ids.to(ad.device)
        self.logits, _ = ad.forward(ad.embed_tokens(ids), self.mask, pos, self.cache)

    def select(self, index: torch.Tensor) -> None:
        idx = index.to(self.mask.device)
        self.cache.batch_select_indices(idx)
        self.mask = self.mask.index_select(0, idx)
        self.next_pos = self.next_pos.index_select(0, idx)
        self.logits = self.logits.index_select(0, idx.to(self.logits.device))
