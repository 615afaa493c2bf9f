"""Activation steering and residual probes: steering on decoder and vision layers, and the probe.

**Per-row activation steering** (:class:`ActivationSteering`, a
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

**The same on the vision encoder** (``vision_vectors``: per vision layer one vector per
token, VTI's ``visual_direction``). The engine calls ``hooks.start`` before the
prefill (:func:`vcdflow.decoding.engine._decode_rows`: ``start`` → ``collate`` →
``adapter.prefill_embeds``, and in the shared case :func:`~vcdflow.decoding.engine.shared_prefill`
runs ``prefill_embeds`` after ``start`` too), so vision hooks installed in ``start`` are active
whenever the tower encodes an image of the decode. They steer **every** image the tower encodes
(the vision batch is the image rows — or, with shared prefixes, the unique prefixes — and carries
no branch identity); a method that wanted only some branches' images steered would need
``share_prefix = False`` and the image-row order — not built (VTI steers every image).
Two tower layouts:

* batch-first ``[B, T, D]`` towers (LLaVA's CLIP, the demo model's CLIP, InstructBLIP's ViT): a
  fixed token count, the vector of layer l is ``[T, D]`` (token t of every image gets row t), as
  the official ``VTILayer`` broadcasts it (``llm_layers.py:26``);
* **Qwen2.5-VL** (:func:`qwen_window_layout`): the tower (``model.visual``: ``patch_embed`` →
  32 windowed/full-attention ``blocks`` → 2×2 ``merger``) packs the 14-px patches of all images of
  a call into one ``[N, D]`` sequence, grouped by 2×2 merge unit and permuted into window order
  (HF ``Qwen2_5_VisionTransformerPretrainedModel.forward``: ``get_vision_window_index`` and
  ``permute_input_for_window_attn``), each image with its own dynamic-resolution grid
  (``image_grid_thw``). A per-token vector has no fixed token there, so the vector of layer l is a
  **patch grid** ``[H, W, D]`` (the grid the fit ran at, raster order): for each image of a call
  (its grid read from the tower's ``grid_thw`` argument by a pre-hook on the tower) the grid is
  resampled to the image's patch grid ``h × w`` (``vision_resample``: ``"bilinear"``, default,
  ``F.interpolate(align_corners=False)``; ``"nearest"``; ``"exact"`` refuses a grid that differs;
  an equal grid is used as is), and its rows are put into the packed window order, so the patch at
  (row i, column j) of every image gets the direction fitted for that spatial position. The push
  itself is the same formula (per row, normalised per patch). The merger is not steered (the
  official steers the longest ``ModuleList`` of the tower, ``get_layers``: here ``blocks``).
  Videos (``grid_t`` > 1) are refused.

**Residual probe** (:func:`residual_probe`): a prefill (no cache) of given encoded rows —
text-only rows too (:func:`drop_image` removes a row's image) — returning each row's last-position
output of every decoder layer ``[L, D]`` (the residual stream after the layer, not normed: VISTA's
``ForwardTracer`` hooks on the layer modules, ``steering_vector.py:86-88``) and optionally every
vision layer's per-token output (:func:`vision_probe`: ``[L_v + 1, T, D]``, entry 0 the input of the
first encoder layer, i.e. HF ``hidden_states``, as VTI's ``get_visual_hiddenstates`` reads them;
Qwen2.5-VL: ``[L_v + 1, h·w, D]`` per image, its patches taken out of the packed window order into
raster order of its own grid).
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
_VISION_ROOTS = (
    "model.vision_tower",
    "vision_tower",
    "model.vision_model",
    "vision_model",
    "model.visual",
    "visual",
)


def _longest_modulelist(module: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The longest ``nn.ModuleList`` under ``module`` (the official ``get_layers``,
    ``llm_layers.py:48-71``)."""
    best = None
    for _, mod in module.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and (best is None or len(mod) > len(best)):
            best = mod
    return best


def vision_tower(adapter) -> torch.nn.Module:
    """The vision tower module (LLaVA/demo: ``model.vision_tower``; InstructBLIP: ``vision_model``;
    Qwen2.5-VL: ``model.visual``); ``ValueError`` naming the family when there is none."""
    model = adapter.model
    for path in _VISION_ROOTS:
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.Module) and _longest_modulelist(obj) is not None:
            return obj
    raise ValueError(
        f"no vision encoder layers found in {type(model).__name__} "
        f"(family {getattr(adapter, 'family', None)})"
    )


def vision_layers(adapter) -> list:
    """The vision encoder's layers: the longest ``ModuleList`` of the tower (CLIP/ViT encoder layers;
    Qwen2.5-VL's ``visual.blocks``). ``ValueError`` naming the family for a model without a tower."""
    return list(_longest_modulelist(vision_tower(adapter)))


def is_packed_tower(adapter) -> bool:
    """True for a packed-patch tower (Qwen2-VL, Qwen2.5-VL: one ``[N, D]`` patch sequence per call)."""
    return getattr(adapter, "layout", None) == "packed"


def _vision_geometry(adapter) -> tuple[int, int, int]:
    """(patch size, spatial merge size, window size in pixels) of a packed tower's config;
    Qwen2-VL's tower has no windows (full attention over merge units in raster order): one window
    larger than any image."""
    vc = adapter.config.vision_config
    return int(vc.patch_size), int(vc.spatial_merge_size), int(getattr(vc, "window_size", None) or 1 << 30)


def qwen_window_layout(grid_thw, merge: int, window: int, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each row of Qwen2.5-VL's packed block sequence comes from: ``(image [N], raster [N])``,
    ``raster = i·w + j`` the patch's (row i, column j) in its image's ``h × w`` patch grid.

    The processor flattens each image's patches merge unit by merge unit (units row-major over the
    ``h/m × w/m`` unit grid, the ``m × m`` patches of a unit row-major; ``Qwen2VLImageProcessor``'s
    ``reshape(t, tp, c, h/m, m, p, w/m, m, p).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)``); the tower
    then reorders the units into windows of ``window / m / patch`` units a side (windows row-major,
    units row-major inside; ``transformers.vision_utils.get_vision_window_index``, applied by
    ``permute_input_for_window_attn``), images one after the other. ``ValueError`` for a video
    (``grid_t`` > 1)."""
    ws = max(1, window // merge // patch)
    imgs, rasters = [], []
    for k, (t, h, w) in enumerate(torch.as_tensor(grid_thw).tolist()):
        if int(t) != 1:
            raise ValueError(
                f"vision steering on qwen2_5_vl: image {k} has grid_t={t} (a video); only still "
                "images are supported"
            )
        hm, wm = int(h) // merge, int(w) // merge
        uy, ux = torch.meshgrid(torch.arange(hm), torch.arange(wm), indexing="ij")
        nww = -(-wm // ws)
        key = (((uy // ws) * nww + ux // ws) * ws + uy % ws) * ws + ux % ws  # window, then row-major inside
        order = torch.argsort(key.flatten())  # units in window order
        y, x = order // wm, order % wm
        si, sj = torch.meshgrid(torch.arange(merge), torch.arange(merge), indexing="ij")
        rows = (
            (y.view(-1, 1) * merge + si.flatten().view(1, -1)) * int(w)
            + x.view(-1, 1) * merge
            + sj.flatten().view(1, -1)
        )
        rasters.append(rows.flatten())
        imgs.append(torch.full((rows.numel(),), k, dtype=torch.long))
    if not imgs:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return torch.cat(imgs), torch.cat(rasters)


RESAMPLE_MODES = ("bilinear", "nearest", "exact")


def resample_grid(d: torch.Tensor, h: int, w: int, mode: str = "bilinear") -> torch.Tensor:
    """A patch-grid direction ``[H, W, D]`` at an ``h × w`` grid, as raster rows ``[h·w, D]``:
    unchanged when the grid is equal, else ``F.interpolate`` (``bilinear`` with
    ``align_corners=False``, or ``nearest``); ``exact`` raises for a different grid."""
    H, W, D = d.shape
    if (H, W) == (h, w):
        return d.reshape(h * w, D)
    if mode == "exact":
        raise ValueError(
            f"vision steering direction is fitted at a {H}x{W} patch grid, the image has {h}x{w} "
            f"(vision_resample='exact'; 'bilinear' or 'nearest' resample it)"
        )
    if mode not in RESAMPLE_MODES:
        raise ValueError(f"vision_resample must be one of {', '.join(RESAMPLE_MODES)}, got {mode!r}")
    kw = {"align_corners": False} if mode == "bilinear" else {}
    out = F.interpolate(d.permute(2, 0, 1).unsqueeze(0).float(), size=(h, w), mode=mode, **kw)[0]
    return out.permute(1, 2, 0).reshape(h * w, D).to(d.dtype)


def packed_rows(
    d: torch.Tensor, grid_thw, geometry: tuple[int, int, int], mode: str = "bilinear"
) -> torch.Tensor:
    """A patch-grid direction ``[H, W, D]`` laid out as Qwen2.5-VL's packed block sequence
    ``[N, D]`` for the images of ``grid_thw`` (each resampled to its grid, then put in window
    order, :func:`qwen_window_layout`)."""
    patch, merge, window = geometry
    img, ras = qwen_window_layout(grid_thw, merge, window, patch)
    grids = torch.as_tensor(grid_thw).tolist()
    per = [resample_grid(d, int(h), int(w), mode) for _, h, w in grids]
    offs = torch.tensor([0] + [int(h) * int(w) for _, h, w in grids[:-1]]).cumsum(0)
    return torch.cat(per).index_select(0, (offs[img] + ras).to(d.device))


def _grid_arg(args, kwargs):
    g = kwargs.get("grid_thw")
    if g is None and len(args) > 1:
        g = args[1]
    if g is None:
        raise RuntimeError("vision steering on qwen2_5_vl: the tower was called without grid_thw")
    return g


def _check_layer(l: int, n: int, what: str) -> int:
    idx = l if l >= 0 else n + l
    if not 0 <= idx < n:
        raise ValueError(f"{what} layer {l} out of range: the model has {n} {what} layers")
    return idx


@dataclass
class ActivationSteering(DecodeHooks):
    """Steering of decoder and vision-encoder layers as decode hooks. ``vectors``: decoder layer index → ``[D]`` (every steered row)
    or ``[n_requests, D]`` with ``per_request``; ``lam`` the push λ (VTI: 0.1 × α_text); ``gate``
    VISTA's cosine gate; ``branches`` the steered branch indices (None: all rows).
    ``vision_vectors``: vision layer index → ``[T, D]`` per-token vectors (batch-first towers) or a
    ``[H, W, D]`` patch grid (Qwen2.5-VL, resampled per image with ``vision_resample``), pushed with
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
    vision_resample: str = "bilinear"
    _handles: list = field(default_factory=list)

    def start(self, adapter, seqs, tokens) -> None:
        super().start(adapter, seqs, tokens)
        self._mask = None  # [R] bool: rows to steer (None: all)
        self._req = None  # [R] long: request index of each row (per-request vectors)
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
                    raise ValueError(
                        f"steering vector of decoder layer {l} has size {v.shape[-1]}, the model's "
                        f"hidden size is {D}"
                    )
                self._handles.append(
                    mlp_of(mods[idx]).register_forward_hook(self._text_hook(v.to(dev).float()))
                )
        if self.vision_vectors:
            vmods = vision_layers(adapter)
            self._packed = is_packed_tower(adapter)
            self._grid = None
            if self._packed:
                self._geometry = _vision_geometry(adapter)

                def pre(module, args, kwargs):
                    self._grid = _grid_arg(args, kwargs)

                self._handles.append(vision_tower(adapter).register_forward_pre_hook(pre, with_kwargs=True))
            for l, v in self.vision_vectors.items():
                idx = _check_layer(int(l), len(vmods), "vision")
                want = 3 if self._packed else 2
                if v.dim() != want:
                    raise ValueError(
                        f"vision steering vector of layer {l} is {list(v.shape)}; the {adapter.family} tower takes "
                        + (
                            "a patch grid [H, W, D] (its images have dynamic resolution)"
                            if self._packed
                            else "one vector per token [T, D]"
                        )
                    )
                self._handles.append(
                    mlp_of(vmods[idx]).register_forward_hook(self._vision_hook(v.to(dev).float(), l))
                )

    def _text_hook(self, v: torch.Tensor):
        def hook(module, args, output):
            x = output[0] if isinstance(output, tuple) else output
            if self.per_request:
                if self._req is None:
                    raise RuntimeError(
                        "per-request steering vectors need the rows' requests (before_forward)"
                    )
                vv = v.index_select(0, self._req.to(v.device)).unsqueeze(1)  # [R, 1, D]
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
            if self._packed:
                rows = packed_rows(v, self._grid, self._geometry, self.vision_resample)
                if x.dim() != 2 or x.shape != rows.shape:
                    raise ValueError(
                        f"vision steering of layer {l}: {list(rows.shape)} patch vectors for a tower "
                        f"layer output of {list(x.shape)}"
                    )
                y = steer(x, rows, self.vision_lam, False)
                return (y,) + tuple(output[1:]) if isinstance(output, tuple) else y
            if x.dim() != 3 or x.shape[-2:] != v.shape:
                raise ValueError(
                    f"vision steering vector of layer {l} is {list(v.shape)} (tokens × hidden), "
                    f"the tower's layer output is {list(x.shape)}"
                )
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
            if self._steered(br) != self._steered(p_br) or (
                self.per_request and self._steered(br) and req != p_req
            ):
                raise RuntimeError(
                    "activation steering: rows steered differently shared one prefix (request "
                    f"{req} branch {br} took the prefix of request {p_req} branch {p_br}); a method "
                    "steering some rows only must set share_prefix = False"
                )

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


# --- residual probes --------------------------------------------------------------------------------
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
    extras = {
        k: v[..., keep]
        for k, v in enc.extras.items()
        if k in getattr(adapter, "TOKEN_EXTRAS", ()) and v.shape[-1] == enc.length
    }
    return Encoded(input_ids=enc.input_ids[keep], pixel_values=None, extras=extras, text=enc.text)


@dataclass
class _VisionCapture:
    """Hooks on every vision encoder layer (+ a pre-hook on the first one): per call of the tower
    the stacked outputs ``[B, L_v + 1, T, D]`` (HF ``hidden_states`` layout); Qwen2.5-VL
    (``packed``): ``[L_v + 1, N, D]`` per call plus the call's ``grid_thw`` (a pre-hook on the
    tower), split per image into raster order by :meth:`images`."""

    layers: list
    calls: list = field(default_factory=list)
    _handles: list = field(default_factory=list)
    _cur: list = field(default_factory=list)
    tower: Any = None
    geometry: tuple | None = None
    grids: list = field(default_factory=list)

    def images(self) -> list[torch.Tensor]:
        """Per image of every call, in order: ``[L_v + 1, T, D]`` (packed: ``[L_v + 1, h·w, D]``, raster)."""
        if self.tower is None:
            return [x for c in self.calls for x in c.unbind(0)]
        patch, merge, window = self.geometry
        out = []
        for c, g in zip(self.calls, self.grids):
            img, ras = qwen_window_layout(g, merge, window, patch)
            for k in range(len(torch.as_tensor(g))):
                sel = (img == k).nonzero().flatten()
                out.append(c[:, sel[torch.argsort(ras[sel])]])
        return out

    def __enter__(self):
        if self.tower is not None:

            def gpre(module, args, kwargs):
                self.grids.append(torch.as_tensor(_grid_arg(args, kwargs)).cpu())

            self._handles.append(self.tower.register_forward_pre_hook(gpre, with_kwargs=True))

        def pre(module, args, kwargs):
            x = args[0] if args else kwargs.get("hidden_states")
            self._cur = [x.detach().float().cpu()]

        def post(module, args, output, _k=None):
            x = output[0] if isinstance(output, tuple) else output
            self._cur.append(x.detach().float().cpu())
            if len(self._cur) == len(self.layers) + 1:
                self.calls.append(
                    torch.stack(self._cur, dim=1) if self._cur[0].dim() == 3 else torch.stack(self._cur)
                )
                self._cur = []

        self._handles.append(self.layers[0].register_forward_pre_hook(pre, with_kwargs=True))
        for layer in self.layers:
            self._handles.append(layer.register_forward_hook(post))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _capture(adapter) -> _VisionCapture:
    if is_packed_tower(adapter):
        return _VisionCapture(
            vision_layers(adapter), tower=vision_tower(adapter), geometry=_vision_geometry(adapter)
        )
    return _VisionCapture(vision_layers(adapter))


def vision_probe(adapter, rows: Sequence[Any], chunk: int = 16) -> list[torch.Tensor]:
    """Per image row (in order): every vision layer's per-token output ``[L_v + 1, T, D]``
    (float32, CPU; entry 0 = the first layer's input; Qwen2.5-VL: ``[L_v + 1, h·w, D]`` in raster
    order of the image's patch grid). Runs the tower through ``adapter.image_features`` (any
    :class:`ActivationSteering` vision hooks in place apply)."""
    out: list[torch.Tensor] = []
    img_rows = [r for r in rows if r.pixel_values is not None]
    with torch.inference_mode():
        for c in range(0, len(img_rows), chunk):
            part = img_rows[c : c + chunk]
            with _capture(adapter) as cap:
                adapter.image_features(part)
            got = cap.images()
            if len(got) != len(part):
                raise RuntimeError(f"vision probe: {len(got)} tower outputs for {len(part)} images")
            out.extend(got)
    return out


def residual_probe(adapter, rows: Sequence[Any], chunk: int = 8, vision: bool = False):
    """The residual probe: one prefill (no cache) of ``rows`` — encoded rows or :class:`~vcdflow.decoding.types.Branch`
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
            part = list(rows[c : c + chunk])
            cap = LayerCapture(layers=list(range(L)))
            cap.start(adapter, [], [])
            vcap = _capture(adapter) if vision and any(r.pixel_values is not None for r in part) else None
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
            hs = torch.stack([cap.last[l].float().cpu() for l in range(L)], dim=1)  # [R, L, D]
            if not vision:
                res.extend(hs.unbind(0))
                continue
            vis = iter(vcap.images()) if vcap is not None and vcap.calls else iter(())
            for k, r in enumerate(part):
                res.append((hs[k], next(vis) if r.pixel_values is not None else None))
    return res
