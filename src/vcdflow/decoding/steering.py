"""Activation steering and residual probes (engine capabilities E14, E14v, E16; ``methods-3.md`` §0).

**E14 — per-row activation steering** (:class:`ActivationSteering`, a
:class:`~vcdflow.decoding.hooks.DecodeHooks`): a forward hook on the MLP of each chosen decoder
layer (the residual *branch*: ``h ← h + mlp(norm(h))``, so the hook changes what the MLP adds, not
the stream) replaces its output ``x`` at **every position** (prefill, shared prefix and suffix,
every step) by the norm-preserving push (:func:`steer`)::

    x ← ‖x‖ · normalize(normalize(x) + y_l),    y_l = λ · g · normalize(v_l)
    g = 1 + max(0, cos(x, −v_l))   (``gate=True``, VISTA)   or   g = 1   (VTI)

— VISTA ``LzVv123456/VISTA@dc62252:llm_layers.py:15-32`` (``VSVLayer.forward``: the gate at
line 27, the push at lines 28-30), VTI ``shengliu66/VTI@bb5dfee:vti_utils/llm_layers.py:16-30``
(``VTILayer.forward``: ``lambda_sim = 1.0``, the push with its hard-coded 0.1 at line 28). Both
official layers wrap each layer's ``mlp`` in ``nn.Sequential(mlp, layer)``
(``llm_layers.py:150`` / ``:121``); a forward hook on the same module is that. The computation is in
float32 and cast back to the model's dtype (the official layers return ``.half()``).

``v_l`` is one vector for every steered row (``[D]``, VTI) or one per request (``[n_requests, D]``,
``per_request=True``: the row of request r gets ``v_l[r]``, VISTA). Only rows of the branches in
``branches`` are steered (None: every row); the row mask is rebuilt in ``before_forward`` from
``rows.branch`` / ``rows.request``, so prefix rows, suffix rows and re-indexed step rows all get
their request's vector. Shared-prefix prefill computes one prefix row for every row with the same
system text + image: that is exact only when those rows are steered alike. The hooks check it when
the prefix rows are copied to their rows (``select`` after the ``"prefix"`` forward) and raise,
naming ``share_prefix``, if a steered and an unsteered row (or, with per-request vectors, two
requests) shared a prefix — such a method sets ``share_prefix = False`` (VISTA does).

**E14v — the same on the vision encoder** (``vision_vectors``: per vision layer one vector per
token ``[T, D]``, VTI's ``visual_direction``). The engine calls ``hooks.start`` before the
prefill (:func:`vcdflow.decoding.engine._decode_rows`: ``start`` → ``collate`` →
``adapter.prefill_embeds``, and in the shared case :func:`~vcdflow.decoding.engine.shared_prefill`
runs ``prefill_embeds`` after ``start`` too), so vision hooks installed in ``start`` are active
whenever the tower encodes an image of the decode. They steer **every** image the tower encodes
(the vision batch is the image rows — or, with shared prefixes, the unique prefixes — and carries
no branch identity); a method that wanted only some branches' images steered would need
``share_prefix = False`` and the image-row order — not built (VTI steers every image). Only
towers whose layers see ``[B, T, D]`` (CLIP, BLIP-2/InstructBLIP ViT) take per-token vectors;
Qwen2.5-VL's tower packs the patches of dynamic-resolution images into one ``[N, D]`` sequence,
where a per-token vector has no fixed meaning: :func:`vision_layers` refuses it.

**E16 — residual probe** (:func:`residual_probe`): a prefill (no cache) of given encoded rows —
text-only rows too (:func:`drop_image` removes a row's image) — returning each row's last-position
output of every decoder layer ``[L, D]`` (the residual stream after the layer, not normed: VISTA's
``ForwardTracer`` hooks on the layer modules, ``steering_vector.py:86-88``) and optionally every
vision layer's per-token output (:func:`vision_probe`: ``[L_v + 1, T, D]``, entry 0 the input of the
first encoder layer, i.e. HF ``hidden_states``, as VTI's ``get_visual_hiddenstates`` reads them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Collection, Mapping, Sequence

import torch
import torch.nn.functional as F

from .hooks import DecodeHooks, LayerCapture, Rows

_MLP_KEYWORDS = ("mlp", "feedforward", "ffn")  # the official find_module keywords (llm_layers.py:111)


def steer(x: torch.Tensor, v: torch.Tensor, lam: float, gate: bool = False) -> torch.Tensor:
    """``‖x‖ · normalize(normalize(x) + λ·g·normalize(v))`` over the last dimension (float32,
    returned in ``x``'s dtype); ``g = 1 + max(0, cos(x, −v))`` with ``gate`` else 1. ``v``
    broadcasts against ``x``."""
    xf = x.float()
    vf = v.float().to(xf.device)
    norm = torch.norm(xf, p=2, dim=-1, keepdim=True)
    y = lam * F.normalize(vf, dim=-1)
    if gate:
        y = y * (1.0 + F.cosine_similarity(xf, -vf, dim=-1).clamp(min=0.0)).unsqueeze(-1)
    return (F.normalize(F.normalize(xf, p=2, dim=-1) + y, p=2, dim=-1) * norm).to(x.dtype)


def mlp_of(layer) -> torch.nn.Module:
    """The MLP of a transformer block: its ``mlp`` attribute, else the first submodule whose name
    holds "mlp"/"feedforward"/"ffn" (the official ``find_module``, ``llm_layers.py:74-87``)."""
    m = getattr(layer, "mlp", None)
    if isinstance(m, torch.nn.Module):
        return m
    for name, mod in layer.named_modules():
        if name and any(k in name for k in _MLP_KEYWORDS):
            return mod
    raise ValueError(f"no MLP module in {type(layer).__name__} (looked for {', '.join(_MLP_KEYWORDS)})")


#: where each family's vision tower lives (attribute paths from the top model)
_VISION_ROOTS = ("model.vision_tower", "vision_tower", "model.vision_model", "vision_model", "model.visual", "visual")


def _longest_modulelist(module: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The longest ``nn.ModuleList`` under ``module`` (the official ``get_layers``,
    ``llm_layers.py:48-71``)."""
    best = None
    for _, mod in module.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and (best is None or len(mod) > len(best)):
            best = mod
    return best


def vision_layers(adapter) -> list:
    """The vision encoder's layers (batch-first ``[B, T, D]`` towers only: LLaVA's CLIP, the demo
    model's CLIP, InstructBLIP's ViT). ``ValueError`` naming the family for Qwen2.5-VL (packed
    dynamic-resolution patches) or a model without a tower."""
    family = getattr(adapter, "family", None)
    if family == "qwen2_5_vl":
        raise ValueError("per-token vision steering does not apply to the qwen2_5_vl family: its vision tower "
                         "packs the patches of dynamic-resolution images into one sequence (no fixed token count)")
    model = adapter.model
    for path in _VISION_ROOTS:
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.Module):
            layers = _longest_modulelist(obj)
            if layers is not None:
                return list(layers)
    raise ValueError(f"no vision encoder layers found in {type(model).__name__} (family {family})")


def _check_layer(l: int, n: int, what: str) -> int:
    idx = l if l >= 0 else n + l
    if not 0 <= idx < n:
        raise ValueError(f"{what} layer {l} out of range: the model has {n} {what} layers")
    return idx


@dataclass
class ActivationSteering(DecodeHooks):
    """E14 + E14v as decode hooks. ``vectors``: decoder layer index → ``[D]`` (every steered row)
    or ``[n_requests, D]`` with ``per_request``; ``lam`` the push λ (VTI: 0.1 × α_text); ``gate``
    VISTA's cosine gate; ``branches`` the steered branch indices (None: all rows).
    ``vision_vectors``: vision layer index → ``[T, D]`` per-token vectors, pushed with
    ``vision_lam`` into every image the tower encodes during the decode. Usable outside a decode
    too: ``start(adapter, [], [])``, then forwards (every row steered with the shared vectors), then
    ``finish()`` (VTI's fit runs its textual probe with the visual intervention on this way)."""

    vectors: Mapping[int, torch.Tensor] = field(default_factory=dict)
    lam: float = 0.0
    gate: bool = False
    per_request: bool = False
    branches: Collection[int] | None = None
    vision_vectors: Mapping[int, torch.Tensor] = field(default_factory=dict)
    vision_lam: float = 0.0
    _handles: list = field(default_factory=list)

    def start(self, adapter, seqs, tokens) -> None:
        super().start(adapter, seqs, tokens)
        self._mask = None   # [R] bool: rows to steer (None: all)
        self._req = None    # [R] long: request index of each row (per-request vectors)
        self._prefix = None  # the "prefix" forward's rows, until they are copied to their request rows
        # the engine's flat row order (request-major, original branch first)
        self._flat = [(i, j) for i, s in enumerate(seqs) for j in range(len(s))]
        try:
            self._install(adapter)
        except Exception:
            self.finish()
            raise

    def _install(self, adapter) -> None:
        dev = adapter.device
        if self.vectors:
            mods = adapter.decoder_layers()
            D = int(adapter.text_config.hidden_size)
            for l, v in self.vectors.items():
                idx = _check_layer(int(l), len(mods), "decoder")
                if v.shape[-1] != D:
                    raise ValueError(f"steering vector of decoder layer {l} has size {v.shape[-1]}, the model's "
                                     f"hidden size is {D}")
                self._handles.append(mlp_of(mods[idx]).register_forward_hook(self._text_hook(v.to(dev).float())))
        if self.vision_vectors:
            vmods = vision_layers(adapter)
            for l, v in self.vision_vectors.items():
                idx = _check_layer(int(l), len(vmods), "vision")
                self._handles.append(mlp_of(vmods[idx]).register_forward_hook(self._vision_hook(v.to(dev).float(), l)))

    def _text_hook(self, v: torch.Tensor):
        def hook(module, args, output):
            x = output[0] if isinstance(output, tuple) else output
            if self.per_request:
                if self._req is None:
                    raise RuntimeError("per-request steering vectors need the rows' requests (before_forward)")
                vv = v.index_select(0, self._req.to(v.device)).unsqueeze(1)   # [R, 1, D]
            else:
                vv = v
            y = steer(x, vv, self.lam, self.gate)
            if self._mask is not None:
                y = torch.where(self._mask.to(x.device).view(-1, *([1] * (x.dim() - 1))), y, x)
            return (y,) + tuple(output[1:]) if isinstance(output, tuple) else y
        return hook

    def _vision_hook(self, v: torch.Tensor, l: int):
        def hook(module, args, output):
            x = output[0] if isinstance(output, tuple) else output
            if x.dim() != 3 or x.shape[-2:] != v.shape:
                raise ValueError(f"vision steering vector of layer {l} is {list(v.shape)} (tokens × hidden), "
                                 f"the tower's layer output is {list(x.shape)}")
            y = steer(x, v, self.vision_lam, False)
            return (y,) + tuple(output[1:]) if isinstance(output, tuple) else y
        return hook

    def _steered(self, branch: int) -> bool:
        return self.branches is None or int(branch) in set(int(b) for b in self.branches)

    def select(self, index: torch.Tensor) -> None:
        pre, self._prefix = self._prefix, None
        if pre is None or not self.vectors:
            return
        for (req, br), k in zip(self._flat, index.tolist()):
            p_req, p_br = pre.request[k], pre.branch[k]
            if self._steered(br) != self._steered(p_br) or (self.per_request and self._steered(br) and req != p_req):
                raise RuntimeError("activation steering: rows steered differently shared one prefix (request "
                                   f"{req} branch {br} took the prefix of request {p_req} branch {p_br}); a method "
                                   "steering some rows only must set share_prefix = False")

    def before_forward(self, phase: str, rows: Rows) -> None:
        self._prefix = rows if phase == "prefix" else None
        if self.branches is None:
            self._mask = None
        else:
            keep = set(int(b) for b in self.branches)
            self._mask = torch.tensor([b in keep for b in rows.branch], dtype=torch.bool)
        self._req = torch.tensor(list(rows.request), dtype=torch.long)

    def finish(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


@dataclass
class HookChain(DecodeHooks):
    """Several :class:`DecodeHooks` as one: every callback goes to each, in order (``finish`` to
    all, also when one fails). ``parts[k]`` is reachable as ``chain[k]``."""

    parts: Sequence[DecodeHooks] = ()

    def __getitem__(self, k):
        return self.parts[k]

    def start(self, adapter, seqs, tokens) -> None:
        super().start(adapter, seqs, tokens)
        for p in self.parts:
            p.start(adapter, seqs, tokens)

    def before_forward(self, phase, rows) -> None:
        for p in self.parts:
            p.before_forward(phase, rows)

    def after_forward(self, phase, rows, logits) -> None:
        for p in self.parts:
            p.after_forward(phase, rows, logits)

    def select(self, index) -> None:
        for p in self.parts:
            p.select(index)

    def finish(self) -> None:
        err = None
        for p in self.parts:
            try:
                p.finish()
            except Exception as e:  # noqa: BLE001 - remove every hook, re-raise the first error
                err = err or e
        if err is not None:
            raise err


# --- E16: residual probes --------------------------------------------------------------------------
def image_token_ids(adapter) -> set[int]:
    """Token ids that belong to a row's image: the placeholder, plus Qwen2.5-VL's vision start/end
    markers (removed with the image by :func:`drop_image`)."""
    ids = {int(adapter.image_token_id)} if adapter.image_token_id is not None else set()
    for attr in ("vision_start_token_id", "vision_end_token_id"):
        v = getattr(adapter.config, attr, None)
        if v is not None:
            ids.add(int(v))
    return ids


def drop_image(adapter, enc):
    """``enc`` with its image removed: the same prompt tokens without the image placeholder (and
    Qwen2.5-VL's vision markers), no pixels, no image extras — VISTA's negative input, "the
    templated prompt with the image removed" (``model_loader.py:372-424``: BOS + the text before
    and after ``<ImageHere>``; the official tokenises the two text chunks separately, so a token
    at the seam can differ; for InstructBLIP the text part only, ``:373-383``)."""
    from ..models.adapters import Encoded

    drop = image_token_ids(adapter)
    keep = torch.tensor([int(t) not in drop for t in enc.input_ids.tolist()], dtype=torch.bool)
    extras = {k: v[..., keep] for k, v in enc.extras.items()
              if k in getattr(adapter, "TOKEN_EXTRAS", ()) and v.shape[-1] == enc.length}
    return Encoded(input_ids=enc.input_ids[keep], pixel_values=None, extras=extras, text=enc.text)


@dataclass
class _VisionCapture:
    """Hooks on every vision encoder layer (+ a pre-hook on the first one): per call of the tower
    the stacked outputs ``[B, L_v + 1, T, D]`` (HF ``hidden_states`` layout)."""

    layers: list
    calls: list = field(default_factory=list)
    _handles: list = field(default_factory=list)
    _cur: list = field(default_factory=list)

    def __enter__(self):
        def pre(module, args, kwargs):
            x = args[0] if args else kwargs.get("hidden_states")
            self._cur = [x.detach().float().cpu()]

        def post(module, args, output, _k=None):
            x = output[0] if isinstance(output, tuple) else output
            self._cur.append(x.detach().float().cpu())
            if len(self._cur) == len(self.layers) + 1:
                self.calls.append(torch.stack(self._cur, dim=1) if self._cur[0].dim() == 3 else torch.stack(self._cur))
                self._cur = []

        self._handles.append(self.layers[0].register_forward_pre_hook(pre, with_kwargs=True))
        for layer in self.layers:
            self._handles.append(layer.register_forward_hook(post))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()


def vision_probe(adapter, rows: Sequence[Any], chunk: int = 16) -> list[torch.Tensor]:
    """Per image row (in order): every vision layer's per-token output ``[L_v + 1, T, D]``
    (float32, CPU; entry 0 = the first layer's input). Runs the tower through
    ``adapter.image_features`` (any :class:`ActivationSteering` vision hooks in place apply)."""
    layers = vision_layers(adapter)
    out: list[torch.Tensor] = []
    img_rows = [r for r in rows if r.pixel_values is not None]
    with torch.inference_mode():
        for c in range(0, len(img_rows), chunk):
            part = img_rows[c:c + chunk]
            with _VisionCapture(layers) as cap:
                adapter.image_features(part)
            got = torch.cat(cap.calls) if cap.calls else torch.empty(0)
            if got.shape[0] != len(part):
                raise RuntimeError(f"vision probe: {got.shape[0]} tower outputs for {len(part)} images")
            out.extend(got.unbind(0))
    return out


def residual_probe(adapter, rows: Sequence[Any], chunk: int = 8, vision: bool = False):
    """E16: one prefill (no cache) of ``rows`` — encoded rows or :class:`~vcdflow.decoding.types.Branch`
    objects (encoded here; text-only ones welcome), chunked,
    left-padded. Returns per row the last-position output of every decoder layer ``[L, D]``
    (float32, CPU, not normed); with ``vision`` a pair ``(layers, vision)`` per row, ``vision`` =
    :func:`vision_probe` of the row's image (None for a text-only row). Hooks already on the model
    (steering) apply."""
    from .types import Branch

    rows = [adapter.encode(r) if isinstance(r, Branch) else r for r in rows]
    L = len(adapter.decoder_layers())
    res: list = []
    with torch.inference_mode():
        for c in range(0, len(rows), chunk):
            part = list(rows[c:c + chunk])
            cap = LayerCapture(layers=list(range(L)))
            cap.start(adapter, [], [])
            vcap = _VisionCapture(vision_layers(adapter)) if vision and any(r.pixel_values is not None for r in part) \
                else None
            try:
                ids, mask = adapter.collate(part)
                if vcap is not None:
                    with vcap:
                        embeds = adapter.prefill_embeds(ids, part)
                else:
                    embeds = adapter.prefill_embeds(ids, part)
                pos, _ = adapter.prefill_positions(ids, mask, part)
                cap.before_forward("prefill", Rows(request=list(range(len(part))), branch=[0] * len(part)))
                adapter.forward(embeds, mask, pos, None)
            finally:
                cap.finish()
            hs = torch.stack([cap.last[l].float().cpu() for l in range(L)], dim=1)   # [R, L, D]
            if not vision:
                res.extend(hs.unbind(0))
                continue
            vis = iter(torch.cat(vcap.calls).unbind(0)) if vcap is not None and vcap.calls else iter(())
            for k, r in enumerate(part):
                res.append((hs[k], next(vis) if r.pixel_values is not None else None))
    return res
