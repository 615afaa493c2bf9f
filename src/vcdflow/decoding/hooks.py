"""Forward hooks: the engine's one seam for methods that read or change the model's internals.

A method that needs more than each row's last-position logits (early-exit logits, hidden states at
image positions, attention capture, attention-score transforms, activation steering, key masks,
a side stream inside the forward…) returns a :class:`DecodeHooks` object from
``Method.forward_hooks(adapter, params)``. The engine (:func:`vcdflow.decoding.engine.decode_rows`)
then calls it around every forward of the decode:

* ``start(adapter, seqs, tokens)`` once: ``seqs[i]`` are request i's encoded branches (original
  first), ``tokens[i]`` the live list of its generated ids (grows as the decode goes);
  install torch hooks / attention functions here;
* ``before_forward(phase, rows)`` before each forward, ``after_forward(phase, rows, logits)`` after
  it: ``phase`` is ``"prefill"`` (all rows, unshared), ``"prefix"`` (shared prefill: one row per
  unique prefix — ``rows.source`` maps them to request rows), ``"suffix"`` (the question suffixes of
  every row on top of the copied prefixes) or ``"step"``; ``rows`` (:class:`Rows`) tells which
  request/branch each row of that forward is;
* ``select(index)`` whenever the engine re-indexes its cache rows (prefix rows copied to their
  requests, finished requests or retired contrast branches dropped): per-row state the hooks keep
  must be re-indexed the same way (``tensor.index_select(0, index)``);
* ``finish()`` once at the end (also after an error): remove every hook.

Inside ``combine``/``plausibility`` a method reads what its hooks captured through
``state.hooks`` (this object) and ``state.rows`` ([n_requests, n_branches] row indices of the
group's logits in the current forward), e.g. ``state.hooks.last[state.rows]``.

:class:`LayerCapture` is the common case: forward hooks on chosen decoder layers that keep each
row's last-position output (the early exit's input), plus optionally every position at prefill.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch


@dataclass
class Rows:
    """The rows of one forward: ``request[k]``/``branch[k]`` of row k, ``step`` (-1 at prefill) and,
    in the ``"prefix"`` phase, ``source[k]`` = the request row whose prefix row k computes."""

    request: list[int]
    branch: list[int]
    step: int = -1
    source: list[int] | None = None


class DecodeHooks:
    """Base class: every callback is a no-op. Subclass and override what you need."""

    def start(self, adapter, seqs: Sequence[Sequence[Any]], tokens: Sequence[list[int]]) -> None:
        self.adapter = adapter
        self.seqs = seqs
        self.tokens = tokens

    def before_forward(self, phase: str, rows: Rows) -> None:
        pass

    def after_forward(self, phase: str, rows: Rows, logits: torch.Tensor) -> None:
        pass

    def select(self, index: torch.Tensor) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass
class LayerCapture(DecodeHooks):
    """Forward hooks on decoder layers ``layers`` (indices into ``adapter.decoder_layers()``;
    negative counts from the end): after every forward ``last[l]`` is the layer's output at the
    last position of each row ([R, D], the residual stream after that layer, before the final
    norm). With ``keep_prefill`` the whole prefill output [R, T, D] of each layer is kept in
    ``prefill[l]`` too (rows of the unshared prefill, or the suffix part in the shared case)."""

    layers: Sequence[int] = ()
    keep_prefill: bool = False
    last: dict = field(default_factory=dict)
    prefill: dict = field(default_factory=dict)
    _handles: list = field(default_factory=list)

    def start(self, adapter, seqs, tokens) -> None:
        super().start(adapter, seqs, tokens)
        mods = adapter.decoder_layers()
        n = len(mods)
        self._phase = None
        for l in self.layers:
            idx = l if l >= 0 else n + l
            if not 0 <= idx < n:
                raise ValueError(f"layer {l} out of range: the model has {n} decoder layers")

            def hook(module, args, output, _l=l):
                h = output[0] if isinstance(output, tuple) else output
                self.last[_l] = h[:, -1, :]
                if self.keep_prefill and self._phase in ("prefill", "suffix", "prefix"):
                    self.prefill[(_l, self._phase)] = h

            self._handles.append(mods[idx].register_forward_hook(hook))

    def before_forward(self, phase: str, rows: Rows) -> None:
        self._phase = phase

    def select(self, index: torch.Tensor) -> None:
        for k, v in list(self.last.items()):
            self.last[k] = v.index_select(0, index.to(v.device))
        for k, v in list(self.prefill.items()):
            # the prefix rows become request rows once (right after the shared prefix forward);
            # later selections drop finished rows from every kept prefill tensor
            self.prefill[k] = v.index_select(0, index.to(v.device))

    def finish(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
