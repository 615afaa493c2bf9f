"""Early-exit logits and prefill hidden states at image positions, through the engine's
forward-hook seam (:mod:`vcdflow.decoding.hooks`).

**Layer indices** follow Hugging Face's ``output_hidden_states`` (the convention of every official
layer-contrast code: DoLa, DeCo, ReVisiT): with L decoder layers,

* ``h_0`` = the decoder's input embeddings (image features included at image positions),
* ``h_l`` (1 ≤ l ≤ L) = the output of decoder layer l − 1 (module index l − 1), **before** the final
  norm N_f. (HF's ``hidden_states[L]`` is N_f(h_L): pass ``norm=True`` to :func:`early_exit` to get it.)

:class:`HiddenStates` is the hook object: forward hooks on the decoder layers (a forward pre-hook on
layer 0 for ``h_0``) that keep, after every forward,

* ``last[l]`` [R, D]: ``h_l`` at the last position of each row (the early exit's input; like
  :class:`~vcdflow.decoding.hooks.LayerCapture`, which indexes modules instead), and
* ``image[k]`` (for ``image_layers``): row k's prefill ``h_l`` at its image-token positions,
  a tensor [len(image_layers), N_img(k), D] (None for a row without image tokens). It is filled from
  the ``"prefill"`` forward, or — shared-prefix prefill — from the ``"prefix"`` forward (the image is
  in the prefix; each prefix row's states are copied to every row that shares it when the engine
  expands the prefix rows) plus any image positions in the ``"suffix"`` forward; then re-indexed on
  every ``select`` (finished rows leave), so it stays aligned with the rows of the current forward.
  ``image_of(request, branch)`` gives it per request.

:func:`early_exit` is the early exit: ``W_lm · [N_f](h)`` in float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from .hooks import DecodeHooks, Rows


def n_layers(adapter) -> int:
    """L: the number of decoder layers of the language model."""
    return len(adapter.decoder_layers())


def tied_embeddings(adapter) -> bool:
    """The model's ``tie_word_embeddings`` (top-level config first, as HF DoLa reads
    ``model.config.tie_word_embeddings``; then the text config)."""
    for cfg in (adapter.config, adapter.text_config):
        v = getattr(cfg, "tie_word_embeddings", None)
        if v is not None:
            return bool(v)
    return False


def start_layer(adapter) -> int:
    """HF DoLa's first candidate layer: 0 if the word embeddings are untied (h_0 is a real early
    exit), else 2 (L > 2), 1 (L = 2) or 0 (``transformers-community/dola``
    ``custom_generate/generate.py`` ``_dola_decoding``; ReVisiT copies it,
    ``bscho333/ReVisiT@b382967:Qwen2.5-VL/data/transformers-v4.50.0/src/transformers/generation/utils.py:2667-2675``)."""
    L = n_layers(adapter)
    if not tied_embeddings(adapter):
        return 0
    return 2 if L > 2 else 1 if L == 2 else 0


def bucket(spec, L: int, start: int, what: str) -> list[int]:
    """HF DoLa's candidate buckets: ``"low"`` = range(start, L/2, 2) (``[start]`` when start = L/2),
    ``"high"`` = range(L/2, L, 2) for L ≤ 40, else range(start, 20, 2) / range(L − 20, L, 2); a list
    of ints is filtered to l < L. ``what`` names the parameter in errors."""
    if spec == "low":
        if start == L // 2:
            return [start]
        return list(range(start, L // 2, 2)) if L <= 40 else list(range(start, 20, 2))
    if spec == "high":
        return list(range(L // 2, L, 2)) if L <= 40 else list(range(L - 20, L, 2))
    if (
        isinstance(spec, (list, tuple))
        and spec
        and all(isinstance(i, int) and not isinstance(i, bool) for i in spec)
    ):
        out = [int(i) for i in spec if 0 <= int(i) < L]
        if not out:
            raise ValueError(
                f"parameter {what!r}: none of the layers {list(spec)} is below the model's {L} layers"
            )
        return out
    raise ValueError(
        f"parameter {what!r} must be 'low', 'high' or a non-empty list of layer indices, got {spec!r}"
    )


def early_exit(adapter, h: torch.Tensor, norm: bool = False) -> torch.Tensor:
    """Early-exit logits: ``W_lm · N_f(h)`` (``norm``) or ``W_lm · h`` → float32 logits [..., V]."""
    if norm:
        h = adapter.final_norm()(h)
    return adapter.lm_head()(h).float()


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


@dataclass
class HiddenStates(DecodeHooks):
    """Hooks keeping ``last[l]`` (early exits) for ``layers`` and the prefill image-position states
    ``image[k]`` for ``image_layers``; all indices are HF ``hidden_states`` indices 0…L (see
    the module docstring)."""

    layers: Sequence[int] = ()
    image_layers: Sequence[int] = ()
    last: dict = field(default_factory=dict)
    image: list = field(default_factory=list)
    _handles: list = field(default_factory=list)

    def start(self, adapter, seqs, tokens) -> None:
        super().start(adapter, seqs, tokens)
        mods = adapter.decoder_layers()
        L = len(mods)
        self._full: dict = {}
        self._phase = None
        self._rows: Rows | None = None
        self.image = []
        self._image_req: dict = {}
        wanted = sorted(set(self.layers) | set(self.image_layers))
        for l in wanted:
            if not 0 <= l <= L:
                raise ValueError(
                    f"layer {l} out of range: hidden states 0…{L} (the model has {L} decoder layers)"
                )
            if l == 0:

                def pre(module, args, kwargs, _l=0):
                    h = args[0] if args else kwargs["hidden_states"]
                    self._keep(_l, h)

                self._handles.append(mods[0].register_forward_pre_hook(pre, with_kwargs=True))
            else:

                def post(module, args, output, _l=l):
                    self._keep(_l, _hidden(output))

                self._handles.append(mods[l - 1].register_forward_hook(post))

    def _keep(self, l: int, h: torch.Tensor) -> None:
        if l in self.layers:
            self.last[l] = h[:, -1, :]
        if l in self.image_layers and self._phase in ("prefill", "prefix", "suffix"):
            self._full[l] = h

    def before_forward(self, phase: str, rows: Rows) -> None:
        self._phase = phase
        self._rows = rows
        self._full = {}

    def _positions(self, phase: str, k: int, width: int) -> torch.Tensor | None:
        """Columns of row k's image tokens in this forward (None: none)."""
        rows = self._rows
        enc = self.seqs[rows.request[k]][rows.branch[k]]
        img = self.adapter.image_positions(enc) if self.adapter.image_token_id is not None else None
        if img is None or img.numel() == 0 or enc.pixel_values is None:
            return None
        n = enc.length
        if phase == "prefill":
            return img + (width - n)
        p = self.adapter.prefix_length(enc)  # an image row's shared prefix (engine.share_plan)
        if phase == "prefix":
            sel = img[img < p]
            return sel + (width - p) if sel.numel() else None
        sel = img[img >= p]  # "suffix": right-aligned suffix ids[p:]
        return sel + (width - n) if sel.numel() else None

    def after_forward(self, phase: str, rows: Rows, logits: torch.Tensor) -> None:
        if phase == "step" or not self.image_layers:
            return
        layers = list(self.image_layers)
        width = self._full[layers[0]].shape[1]
        out = []
        for k in range(len(rows.request)):
            pos = self._positions(phase, k, width)
            if pos is None:
                out.append(None)
                continue
            pos = pos.to(self._full[layers[0]].device)
            out.append(torch.stack([self._full[l][k].index_select(0, pos) for l in layers]))
        self._full = {}
        if phase == "suffix":  # rows already expanded from their prefixes: append suffix image tokens
            merged = []
            for k, (a, b) in enumerate(zip(self.image, out)):
                merged.append(a if b is None else b if a is None else torch.cat([a, b], dim=1))
            out = merged
        self.image = out
        self._image_req = {}
        if phase != "prefix":
            self._image_req = {(r, b): k for k, (r, b) in enumerate(zip(rows.request, rows.branch))}
        self._req_rows = (list(rows.request), list(rows.branch))

    def select(self, index: torch.Tensor) -> None:
        for k, v in list(self.last.items()):
            self.last[k] = v.index_select(0, index.to(v.device))
        idx = index.tolist()
        self.image = [self.image[i] for i in idx] if self.image else []
        if self._image_req:
            rr, bb = self._req_rows
            self._req_rows = ([rr[i] for i in idx], [bb[i] for i in idx])
            self._image_req = {(r, b): k for k, (r, b) in enumerate(zip(*self._req_rows))}

    def image_of(self, request: int, branch: int = 0) -> torch.Tensor | None:
        """Image-position states per request: [len(image_layers), N_img, D] of that request's branch (None: no image)."""
        k = self._image_req.get((request, branch))
        return None if k is None else self.image[k]

    def finish(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
