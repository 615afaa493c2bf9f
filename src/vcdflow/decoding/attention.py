"""Attention capabilities for methods that read or change the text decoder's attention
(capture, score hooks, key masks, side stream, in-forward key selection), built on the engine's hook seam (:mod:`vcdflow.decoding.hooks`).

Route: one attention function is registered with transformers' ``AttentionInterface`` (and
SDPA's mask function with ``AttentionMaskInterface``) under :data:`ATTN_NAME`; while a
decode runs, only the **text decoder's** sub-model is switched to it
(``adapter.text_model().set_attn_implementation``; its config is the text sub-config, so the
vision tower / Q-Former keep their own implementation — :meth:`AttentionHooks.start` asserts
it, and the dispatcher raises if any non-text attention module reaches it). Layers the method
does not hook run transformers' own SDPA (or eager) function unchanged; hooked layers run a
plain eager computation (scores = q·kᵀ·scale + mask → method transform → softmax (float32) →
method observer → ·V), identical to transformers' ``eager_attention_forward``; hooks that touch
only the last query row (``last_row_only``: PAI, the capture, the side stream) run the model's own function for
every row and recompute just that row eagerly, so a long prefill stays on SDPA.

Per forward, a pre-hook on the text model reads the 2-D attention mask the engine passes (left
padding, the shared-prefix layout [prefix padding | prefix | suffix padding | suffix], columns
cut on the left when rows retire) and builds, for every row and key column, ``valid`` (a real
token), ``image`` (one of the row's prompt image placeholders — for InstructBLIP the Q-Former
query outputs) and ``first`` (the row's first real token, e.g. BOS): the k-th real column of a
row is its k-th token (prompt, then generated ids), whatever the padding layout. With the
engine's left padding the **last query row** of every forward is each row's newest real token.

* :class:`AttentionHooks` — subclass and override ``scores`` (a transform of the
  pre-softmax scores [R, H, Q, K], e.g. PAI's amplification; additive −∞ key masks via
  :func:`mask_keys`) and/or ``probs`` (post-softmax [R, H, Q, K] with V: the capture, the side
  stream, SID's selection). ``layers``: the layers that need the eager path.
* :class:`AttentionCapture` — the last query row's attention in chosen layers, head-mean or
  per head; ``image_attention(layer)`` gives each row's weights over its image keys.
* :class:`SideStream` — ONLY's side stream: an alternative attention output of the last query row at one
  layer, carried to the last layer, merged there with the main stream's input, the last layer's
  MLP, N_f and W_lm → ``side_logits`` [R, V] from the same forward.
* SID's key selection is ``scores``/``probs`` together: read layer a−1's probabilities, choose keys, mask
  them in layers a…L−1 of the same forward (see ``methods/sid.py``).

Batching: everything is per row of the current forward (``ctx.branch``/``ctx.request`` say whose
row it is); state kept across forwards is re-indexed in ``select``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .hooks import DecodeHooks, Rows

ATTN_NAME = "vcdflow_hooked"
_ACTIVE: list = []  # stack of running AttentionHooks (innermost last)
_REGISTERED: list = []


def _register() -> None:
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, _dispatch)
    # SDPA's own mask (boolean, or None when causal without padding): the layers that are not
    # hooked then run exactly what plain SDPA runs; the hooked ones make it additive (_additive)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    _REGISTERED.append(True)


def _additive(mask, q_len: int, k_len: int, dtype, device):
    """An additive float mask [B|1, 1, Q, K] (0 / dtype minimum, as transformers' ``eager_mask``)
    from SDPA's boolean mask, or the causal one when SDPA skipped it (None)."""
    lo = torch.finfo(dtype).min
    if mask is None:
        i = torch.arange(q_len, device=device).view(-1, 1)
        j = torch.arange(k_len, device=device).view(1, -1)
        allowed = j <= i + (k_len - q_len)
        return torch.where(allowed, torch.zeros((), dtype=dtype, device=device), lo)[None, None]
    if mask.dtype == torch.bool:
        return torch.where(mask[:, :, :, :k_len], torch.zeros((), dtype=dtype, device=device), lo)
    return mask[:, :, :, :k_len]


def _fallback(name: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.llama.modeling_llama import eager_attention_forward

    if name in (None, "eager"):
        return eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[name]


def _repeat_kv(x: torch.Tensor, n: int) -> torch.Tensor:
    if n == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n, t, d).reshape(b, h * n, t, d)


def _dispatch(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **kwargs):
    """The registered attention function: hooked text layers → :meth:`AttentionHooks.attend`;
    other text layers → the model's own implementation."""
    ctl = _ACTIVE[-1] if _ACTIVE else None
    if ctl is None:
        raise RuntimeError(f"attention implementation {ATTN_NAME!r} used outside a hooked decode")
    layer = ctl._layer_of.get(id(module))
    if layer is None:
        raise RuntimeError(
            f"{type(module).__name__} is not a text decoder layer's attention: only the text model "
            f"may be routed through {ATTN_NAME!r} (the vision tower must stay untouched)"
        )
    if layer in ctl._hooked:
        return ctl.attend(layer, module, query, key, value, attention_mask, scaling, dropout)
    if ctl._prev_impl in (None, "eager"):
        attention_mask = _additive(attention_mask, query.shape[2], key.shape[2], query.dtype, query.device)
    return ctl._orig_fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)


def eager_reference(module, query, key, value, attention_mask, scaling):
    """transformers' eager attention, literally (for tests): (output [B, Q, H, d], probs)."""
    groups = query.shape[1] // key.shape[1]
    k, v = _repeat_kv(key, groups), _repeat_kv(value, groups)
    w = torch.matmul(query, k.transpose(2, 3)) * scaling
    if attention_mask is not None:
        w = w + attention_mask[:, :, :, : k.shape[-2]]
    w = torch.softmax(w, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(w, v).transpose(1, 2).contiguous(), w


def mask_keys(scores: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Additive −∞ on masked keys. ``masked`` is bool [R, K] (every head and query row),
    [R, H, K] (per head) or [R, H, Q, K]; rows with nothing masked are unchanged."""
    if masked.ndim == 2:
        masked = masked[:, None, None, :]
    elif masked.ndim == 3:
        masked = masked[:, :, None, :]
    return scores.masked_fill(masked.to(scores.device), float("-inf"))


@dataclass
class AttnContext:
    """What the hooked layers know about the current forward: ``phase`` and ``rows``
    (:class:`~vcdflow.decoding.hooks.Rows`), ``request``/``branch`` [R] (long), and per row and
    key column ``valid``/``image``/``first``/``generated`` [R, K] (bool); ``n_image`` [R] image
    keys per row; ``q_len`` the forward's query length."""

    phase: str
    rows: Rows
    request: torch.Tensor
    branch: torch.Tensor
    valid: torch.Tensor
    image: torch.Tensor
    first: torch.Tensor
    #: [R, K] bool: the row's generated tokens (real columns past its prompt)
    generated: torch.Tensor | None = None
    #: query positions of this forward (the last ``q_len`` key columns are its own tokens)
    q_len: int = 0

    @property
    def n_image(self) -> torch.Tensor:
        return self.image.sum(-1)

    def keys(self, K: int):
        """(valid, image, first) for the last ``K`` key columns (the attention's key length)."""
        return self.valid[:, -K:], self.image[:, -K:], self.first[:, -K:]


class AttentionHooks(DecodeHooks):
    """Base class of the attention capabilities. ``layers``: decoder-layer indices (negative from
    the end) whose attention runs the eager path with :meth:`scores`/:meth:`probs`; ``None`` in
    ``layers`` is not allowed. Subclasses call ``super().start``/``finish``."""

    #: True: the method reads/changes only the LAST query row of each forward (PAI, ONLY, the
    #: capture): a hooked layer then runs the model's own implementation for all rows and recomputes
    #: just the last row eagerly (prefill stays SDPA-fast; ``scores``/``probs`` see Q = 1)
    last_row_only: bool = False

    def __init__(self, layers: Sequence[int] = ()):
        self.layers = list(layers)
        self.ctx: AttnContext | None = None
        self._handles: list = []
        self._phase = "prefill"
        self._rows: Rows | None = None

    # --- method callbacks ----------------------------------------------------------------------
    def scores(self, layer: int, s: torch.Tensor, ctx: AttnContext, module) -> torch.Tensor:
        """Transform the scaled, masked pre-softmax scores [R, H, Q, K] of ``layer``."""
        return s

    def probs(self, layer: int, p: torch.Tensor, v: torch.Tensor, ctx: AttnContext, module) -> None:
        """Observe the post-softmax probabilities [R, H, Q, K] and the (head-repeated) values
        [R, H, K, d] of ``layer`` (capture, side stream, SID's selection)."""

    # --- plumbing ------------------------------------------------------------------------------
    def start(self, adapter, seqs, tokens) -> None:
        super().start(adapter, seqs, tokens)
        _register()
        mods = adapter.decoder_layers()
        n = len(mods)
        self.n_layers = n
        hooked = set()
        for l in self.layers:
            idx = l if l >= 0 else n + l
            if not 0 <= idx < n:
                raise ValueError(f"layer {l} out of range: the model has {n} decoder layers")
            hooked.add(idx)
        self._hooked = hooked
        self._layer_of = {id(m.self_attn): i for i, m in enumerate(mods)}
        tm = adapter.text_model()
        self._text_model = tm
        self._prev_impl = tm.config._attn_implementation
        self._orig_fn = _fallback(self._prev_impl)
        others = self._other_configs(adapter)
        before = [(c, c._attn_implementation) for c in others]
        self._image_token_id = adapter.image_token_id
        # per (request, branch): prompt length and image flags (padded with False to the longest
        # prompt + 1: the column every non-prompt token reads), on the model's device
        self._prompt = {(r, b): e.input_ids for r, s in enumerate(seqs) for b, e in enumerate(s)}
        P = max([int(x.shape[0]) for x in self._prompt.values()] or [0])
        dev = adapter.device
        self._flags, self._len = {}, {}
        for key, ids in self._prompt.items():
            f = torch.zeros(P + 1, dtype=torch.bool)
            if self._image_token_id is not None:
                f[: ids.shape[0]] = ids == self._image_token_id
            self._flags[key] = f.to(dev)
            self._len[key] = int(ids.shape[0])
        self._P = P
        tm.set_attn_implementation(ATTN_NAME)
        _ACTIVE.append(self)
        self._handles.append(tm.register_forward_pre_hook(self._pre_forward, with_kwargs=True))
        for c, impl in before:
            if c._attn_implementation != impl:
                raise AssertionError(
                    f"switching the text model's attention changed a non-text sub-model "
                    f"({type(c).__name__}: {impl} -> {c._attn_implementation})"
                )

    def _other_configs(self, adapter) -> list:
        """Sub-configs of the whole model other than the text model's (vision, Q-Former…)."""
        text = self._text_model.config
        out, seen, todo = [], {id(text)}, [adapter.model.config]
        while todo:
            c = todo.pop()
            for k in getattr(c, "sub_configs", {}) or {}:
                sc = getattr(c, k, None)
                if sc is not None and id(sc) not in seen:
                    seen.add(id(sc))
                    out.append(sc)
                    todo.append(sc)
        return out

    def before_forward(self, phase: str, rows: Rows) -> None:
        self._phase = phase
        self._rows = rows

    def _pre_forward(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is None or mask.ndim != 2:
            raise RuntimeError("the hooked text model needs the engine's 2-D attention mask")
        rows = self._rows
        R, K = mask.shape
        if rows is None or len(rows.request) != R:
            raise RuntimeError(
                f"attention hooks: forward with {R} rows but {0 if rows is None else len(rows.request)} "
                f"rows announced"
            )
        valid = mask.bool()
        real = valid.long().cumsum(-1) - 1  # k-th real column -> token k of the row
        keys = list(zip(rows.request, rows.branch))
        dev = mask.device
        lengths = torch.tensor([self._len[k] for k in keys], device=dev).view(-1, 1)
        img = torch.stack([self._flags[k] for k in keys]).to(dev)
        P = self._P
        idx = real.clamp(min=0, max=P)
        idx = torch.where(idx < lengths, idx, torch.full_like(idx, P))
        image = torch.gather(img, 1, idx) & valid
        first = valid & (real == 0)
        generated = valid & (real >= lengths)
        emb = kwargs.get("inputs_embeds")
        q_len = int(emb.shape[1]) if emb is not None else int(args[0].shape[1]) if args else 0
        self.ctx = AttnContext(
            phase=self._phase,
            rows=rows,
            request=torch.tensor(rows.request, device=dev),
            branch=torch.tensor(rows.branch, device=dev),
            valid=valid,
            image=image,
            first=first,
            generated=generated,
            q_len=q_len,
        )
        self.new_forward(self.ctx)
        return None

    def new_forward(self, ctx: AttnContext) -> None:
        """Called once per forward after ``ctx`` is built (align per-key state kept across forwards:
        the last ``K − q_len`` of the cache's columns are the old ones, see :func:`align_keys`)."""

    def attend(self, layer, module, query, key, value, attention_mask, scaling, dropout):
        if self.last_row_only and query.shape[2] > 1:
            full_mask = attention_mask
            if self._prev_impl in (None, "eager"):
                full_mask = _additive(attention_mask, query.shape[2], key.shape[2], query.dtype, query.device)
            out, _ = self._orig_fn(module, query, key, value, full_mask, scaling=scaling, dropout=dropout)
            last_mask = None if attention_mask is None else attention_mask[:, :, -1:, :]
            out1, _ = self._eager(layer, module, query[:, :, -1:, :], key, value, last_mask, scaling)
            out = out.clone()
            out[:, -1:] = out1.to(out.dtype)
            return out, None
        return self._eager(layer, module, query, key, value, attention_mask, scaling)

    def _eager(self, layer, module, query, key, value, attention_mask, scaling):
        groups = query.shape[1] // key.shape[1]
        k, v = _repeat_kv(key, groups), _repeat_kv(value, groups)
        s = torch.matmul(query, k.transpose(2, 3)) * scaling
        s = s + _additive(attention_mask, query.shape[2], k.shape[2], s.dtype, s.device)
        s = self.scores(layer, s, self.ctx, module)
        p = torch.softmax(s, dim=-1, dtype=torch.float32).to(query.dtype)
        self.probs(layer, p, v, self.ctx, module)
        out = torch.matmul(p, v).transpose(1, 2).contiguous()
        return out, p

    def finish(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self in _ACTIVE:
            _ACTIVE.remove(self)
            self._text_model.set_attn_implementation(self._prev_impl)


def align_keys(x: torch.Tensor | None, K: int, q_len: int, lead: tuple = ()) -> torch.Tensor:
    """Per-key state ``x`` [..., K_old] of the previous forwards, aligned to this forward's K key
    columns: its last K − q_len columns are the cache's (left padding no row needs may have been
    cut), the q_len new columns start at 0."""
    old = K - q_len
    if x is None:
        return torch.zeros(lead + (K,))
    out = x.new_zeros(x.shape[:-1] + (K,))
    n = min(old, x.shape[-1])
    if n > 0:
        out[..., old - n : old] = x[..., x.shape[-1] - n :]
    return out


class AttentionCapture(AttentionHooks):
    """After every forward, ``last[l]`` is the last query row's attention of layer ``l``
    ([R, K] head-mean, or [R, H, K] with ``per_head``), with ``ctx`` the forward's key columns."""

    last_row_only = True

    def __init__(self, layers: Sequence[int], per_head: bool = False):
        super().__init__(layers)
        self.per_head = per_head
        self.last: dict = {}

    def probs(self, layer, p, v, ctx, module):
        row = p[:, :, -1, :].float()
        self.last[layer] = row if self.per_head else row.mean(1)

    def image_attention(self, layer: int) -> list[torch.Tensor]:
        """Per row of the last forward: its attention over its image keys, in prompt order."""
        a = self.last[layer if layer >= 0 else self.n_layers + layer]
        _, img, _ = self.ctx.keys(a.shape[-1])
        return [a[k][..., img[k]] for k in range(a.shape[0])]

    def select(self, index):
        for k, v in list(self.last.items()):
            self.last[k] = v.index_select(0, index.to(v.device))


class SideStream(AttentionHooks):
    """ONLY's side stream: at decoder layer ``layer`` a subclass's :meth:`side_output` returns an alternative
    attention output for the last query row ([R, D], after ``o_proj``); at the last decoder layer
    it is merged with that layer's main-stream input h: r = ``residual_weight``·h +
    input_layernorm(o), h′ = r + MLP(post_attention_layernorm(r)), and ``side_logits`` =
    W_lm·N_f(h′) ([R, V], float32) — the main stream is untouched (ONLY's TE stream,
    ``zifuwan/ONLY@109bffe:transformers/src/transformers/models/llama/modeling_llama.py:656-662``)."""

    last_row_only = True

    def __init__(self, layer: int = 0, residual_weight: float = 0.2, extra_layers: Sequence[int] = ()):
        super().__init__([layer, *extra_layers])
        self.side_layer = layer
        self.residual_weight = float(residual_weight)
        self.side_logits: torch.Tensor | None = None
        self._side = None

    def side_output(self, p, v, ctx, module) -> torch.Tensor:
        raise NotImplementedError

    def probs(self, layer, p, v, ctx, module):
        if layer == self._side_idx:
            self._side = self.side_output(p, v, ctx, module)

    def start(self, adapter, seqs, tokens):
        super().start(adapter, seqs, tokens)
        n = self.n_layers
        self._side_idx = self.side_layer if self.side_layer >= 0 else n + self.side_layer
        last = adapter.decoder_layers()[-1]
        self._handles.append(last.register_forward_pre_hook(self._merge, with_kwargs=True))
        self._norm, self._head = adapter.final_norm(), adapter.lm_head()

    def _merge(self, module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        o = self._side
        r = self.residual_weight * h[:, -1, :] + module.input_layernorm(o.to(h.dtype))
        out = r + module.mlp(module.post_attention_layernorm(r))
        self.side_logits = self._head(self._norm(out)).float()
        self._side = None
        return None

    def select(self, index):
        if self.side_logits is not None:
            self.side_logits = self.side_logits.index_select(0, index.to(self.side_logits.device))
