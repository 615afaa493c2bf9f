"""``carve``: CARVE, the image masked and cropped by contrasted attention (paper: refined image; code: + original).

Contrastive Attention Refinement for Visual Enhancement (Ge et al., arXiv 2509.06461;
``YuyaoGe/CARVE@a1f0442``): the final pass by ``variant`` — "paper" (default; the refined image
alone), "code" and "code_v4" (the code's two-image final pass) — step 5; the attention maps by
``maps``, the paper's Table 1 temporal settings t_start / t_end / T_full, independent of it — step 2.

Not a logit-level contrast: the *image* is rewritten from contrasted attention maps, then the
question is answered on the refined image (with the original beside it in the code variants).

1. Two attention probes on the original image (``prepare``; one prefill each, eager attention):
   G = ``"{general_instruction} {suffix}"`` and Q = the request's prompt. The attention of the
   last position over the image tokens, heads averaged, per layer = the code's step-0 map
   (``carve/attention.py:53-63``: full recompute per step, ``layer_attention[0, :, -1,
   pos:pos_end].mean(dim=0)``; LLaVA: the 576 tokens from the ``<image>`` id, Qwen: those between
   ``<|vision_start|>`` and ``<|vision_end|>``, ``carve/pipeline.py:65-70``).
2. Â_l = A^Q_l / (A^G_l + λ) for l in ``layers`` (layers the model lacks are skipped, as the code's
   ``continue``), reshaped to the token grid (``dynamic_reshape_attention``,
   ``attention.py:82-101``: the sizes 576/1024/1600/1681/256 first, then the family's grid —
   Qwen ``image_grid_thw[1:] / merge`` (``pipeline.py:92-98``) — then a square root), bilinearly
   resized to the image size (PIL mode "F"), summed: S = Σ_l resize(Â_l)
   (``fuse_contrastive_attention``, ``attention.py:104-129``, ``step_mode="first"``: weight 1).
   Which maps (``maps``; None: the variant's — ``paper_maps`` for "paper", t_start for "code",
   T_full for "code_v4"), the paper's Table 1 columns (POPE accuracy, LLaVA-1.5-7B 86.8 / 89.0 /
   89.0, Qwen2.5-VL-7B 87.9 / 89.7 / 88.6; shared/spec methods-2, CARVE):

   * ``"t_start"``: the prefill's maps (step 0, one forward per probe; the code's v1–v3);
   * ``"t_end"``: each probe's last step map — the probes generate greedily up to
     ``probe_tokens`` and the forward that chose the last token (EOS included) gives the map. The
     code has no such mode (``step_mode`` is "first" or "all"); which step "t_end" is rests on the
     paper's name (UNVERIFIED: each probe's own last step, not the last common one);
   * ``"t_full"``: every step, weighted t+1 (the code's v4, ``attention.py:116-128``; below).

   :data:`TABLE1` says which Table 1 column a (variant, maps) pair reproduces (``Output.meta``
   ``carve_table1``): only ``variant`` "paper" (Algorithm 1's final pass) does; ``paper_maps`` is
   "t_start" by default (what ``carve`` always ran; its records stay valid) and **"t_end" under
   CARVE's protocol** (the paper's headline column: best or tied best on 3 of 4 models).
3. Mask (``carve/masking.py:7-48``): keep S ≥ the (1 − p)·100 percentile; connected components
   (``scipy.ndimage.label``, 4-connectivity); ``version`` v3 (default) and v2 keep the top
   max(K, ⌊p·#regions⌋) regions by summed S (v3) or size (v2); v1 drops regions smaller than
   ⌊total·o/100⌋ pixels.
4. Refine (``masking.py:51-68``, ``att_sum_crop_pipeline``): image × mask, crop to the mask's
   bounding box, LANCZOS-resize by max(W/w, H/h).
5. Final pass (no APC, no contrast), by ``variant``:

   * ``"paper"`` (**default**): the prompt on the refined image alone — the paper's Algorithm 1. Default because it is what the paper describes and reports (Table 1), and
     because every run recorded before the variants existed is this one (their numbers stay
     comparable).
   * ``"code"``: the released code's final pass — ONE prompt holding the original AND the refined
     image, in that order (``carve/pipeline.py:152``: ``_build_inputs(processor, family, [image,
     refined], question, device)``; ``:73-89``: Qwen one image part per image, LLaVA
     ``"<image>" * len(images)``), through the engine's multi-image branch (``Branch.image``
     is a list; the family's chat template writes one placeholder / vision block per image).
     Maps from step 0 as above (the code's v1–v3, ``pipeline.py:19-23``).
   * ``"code_v4"``: the code's default version v4 (``main.py:15`` ``default="v4"``,
     ``pipeline.py:23`` ``("all", "attention_sum")``): the two probes are greedy generations of up
     to ``probe_tokens`` tokens (``pipeline.py:131-138``, ``max_new_tokens`` = 32), the attention
     of every step's last query over the image tokens is captured (
     :class:`~vcdflow.decoding.attention.AttentionCapture` on the fused layers only; the code
     recomputes the whole sequence per step, ``attention.py:51-70`` — a cached decode gives the
     same maps up to float round-off), a step's map counted also for the step that emits EOS
     (``attention.py:63-66``: appended before the break), and
     S = Σ_{t < min(T_Q, T_G)} (t+1) Σ_l resize(Â_{l,t}) (``attention.py:116-128``); the mask
     ranking is ``version``'s (v3 = the code's ``attention_sum``, so the default ``version``
     gives exactly the code's v4); final pass as ``"code"``.

Parameters (code defaults, ``main.py:15-24`` / ``pipeline.py:101-117``): ``variant`` = "paper"
(above), ``maps`` = None and ``paper_maps`` = "t_start" (step 2), ``max_pixels`` = None (the
refined image's pixel budget: Qwen's ``smart_resize`` under it, as the code's processor with
``max_pixels = 256·28·28`` resizes every image it gets, ``pipeline.py:46-51``; CARVE's protocol
sets it for Qwen2.5-VL, whose input images it resizes alike), ``probe_tokens`` = 32 (t_end and
t_full only: the probes' ``max_new_tokens``, ``pipeline.py:114``;
EOS = the engine's EOS ids — the code stops at ``processor.tokenizer.eos_token_id``,
``attention.py:44,65``), ``layers`` = None =
the code's 20…25 (those the model has; a model with ≤ 20 layers uses its last min(6, n) — ours,
where the code would fuse no layer and keep the whole image; an explicit list none of whose
layers exists is an error),
``lam`` = λ = 1e-8, ``top_percent`` = p = 0.2, ``min_keep_regions`` = K = 3, ``outlier_percent``
= o = 0.1 (v1 only), ``version`` = "v3", ``general_instruction`` = "Write a general description
of the image.", ``suffix`` = "Answer the question using a single word or phrase." (the code
appends it to both probe prompts, ``pipeline.py:17,74``; here Q is the request's prompt as
given, so the benchmark prompt should end with the same suffix). Official mode: **greedy**
(paper; ``pipeline.py:154`` ``do_sample=False``, ``max_new_tokens`` 32); sampling is ours.

Divergences: (a) the code's default is v4 = ``variant="code_v4"``; the default here is the
paper's (above); (b) the code's final pass feeds the original *and* the refined image as a
two-image prompt = ``variant="code"``/``"code_v4"``; (c) the code's LLaVA prompt is the non-standard
``"<image>\\nUSER: {q} {suffix}\\nASSISTANT:"`` (``pipeline.py:86-87``); here every pass uses the
family's chat template. Families: LLaVA and Qwen2.5-VL; **not InstructBLIP** (its 32 Q-Former
query tokens have no spatial grid). ``Output.meta``: ``carve_bbox`` (x0, y0, x1, y1) and
``carve_regions`` (kept / found), ``carve_layers`` (the layers fused), ``carve_variant``,
``carve_maps``, ``carve_table1`` (the Table 1 column reproduced, or None); t_end / t_full also
``carve_steps`` ([T_Q, T_G]: the probes' captured steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import torch

from ..types import Branch
from .base import Method

GENERAL_INSTRUCTION = "Write a general description of the image."
ANSWER_SUFFIX = "Answer the question using a single word or phrase."
PAPER_LAYERS = tuple(range(20, 26))
KNOWN_GRIDS = {576: (24, 24), 1024: (32, 32), 1600: (40, 40), 1681: (41, 41), 256: (16, 16)}
VERSIONS = {"v1": "remove_small", "v2": "size", "v3": "attention_sum"}
VARIANTS = ("paper", "code", "code_v4")
#: ``maps``: which probe steps' attention maps are fused (the paper's Table 1 temporal settings)
MAPS = ("t_start", "t_end", "t_full")
#: the map setting a code ``variant`` implies when ``maps`` is None (variant "paper" takes
#: ``paper_maps``); what each variant ran before ``maps`` existed
VARIANT_MAPS = {"code": "t_start", "code_v4": "t_full"}
#: which column of the paper's Table 1 (POPE accuracy) a (variant, maps) pair reproduces: only
#: Algorithm 1's final pass (the refined image alone, ``variant`` "paper") is the paper's; the
#: code's two-image final pass reproduces none
TABLE1 = {("paper", "t_start"): "t_start", ("paper", "t_end"): "t_end", ("paper", "t_full"): "T_full"}


def map_setting(params) -> str:
    """The run's map setting: ``maps``, else its ``variant``'s (:data:`VARIANT_MAPS`; "paper":
    ``paper_maps``)."""
    if params.get("maps"):
        return params["maps"]
    return (
        params.get("paper_maps", "t_start")
        if params["variant"] == "paper"
        else VARIANT_MAPS[params["variant"]]
    )


def default_layers(n_layers: int) -> list[int]:
    """The paper's layers 20…25 that the model has; a model with at most 20 layers (tiny test
    and demo models) uses its last min(6, n) layers instead (ours; the code would fuse nothing)."""
    paper = [layer for layer in PAPER_LAYERS if layer < n_layers]
    return paper or list(range(max(0, n_layers - 6), n_layers))


def token_grid(n: int, fallback: tuple[int, int] | None) -> tuple[int, int] | None:
    """(rows, cols) for ``n`` image tokens, in the code's order of preference; None if none fits."""
    if n <= 1:
        return None
    if n in KNOWN_GRIDS:
        return KNOWN_GRIDS[n]
    if fallback is not None and fallback[0] * fallback[1] <= n:
        return tuple(fallback)
    r = int(math.sqrt(n))
    return (r, r) if r * r == n and r > 1 else None


def _resize(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(
        Image.fromarray(grid.astype(np.float32), mode="F").resize(size, Image.BILINEAR), dtype=np.float32
    )


def _layer_sum(q, g, w: int, h: int, layers, lam: float, fallback) -> np.ndarray:
    """Σ_l resize(q[l] / (g[l] + λ)) over the layers both maps have (``q``/``g``: layer → map)."""
    S = np.zeros((h, w), dtype=np.float64)
    for layer in layers:
        if layer not in q or layer not in g:
            continue
        contrast = q[layer] / (g[layer] + lam)
        shape = token_grid(contrast.size, fallback)
        if shape is None:
            continue
        S += _resize(contrast[: shape[0] * shape[1]].reshape(shape), (w, h))
    return S


def _as_layers(att) -> dict:
    if isinstance(att, dict):
        return {
            int(k): v.float().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
            for k, v in att.items()
        }
    a = att.float().numpy()
    return {i: a[i] for i in range(a.shape[0])}


def fuse_first_step(
    att_q: torch.Tensor, att_g: torch.Tensor, image_size, layers, lam: float, fallback
) -> np.ndarray:
    """S [H, W] from the step-0 maps [n_layers, n_image_tokens] of Q and G."""
    w, h = image_size
    return _layer_sum(_as_layers(att_q), _as_layers(att_g), w, h, layers, lam, fallback)


def fuse_all_steps(maps_q, maps_g, image_size, layers, lam: float, fallback) -> np.ndarray:
    """S [H, W] = Σ_{t < min(T_Q, T_G)} (t+1) Σ_l resize(Q_t[l] / (G_t[l] + λ)) — the code's
    ``step_mode="all"`` (``carve/attention.py:116-128``); ``maps_*``: per step, layer → map."""
    w, h = image_size
    S = np.zeros((h, w), dtype=np.float64)
    for t in range(min(len(maps_q), len(maps_g))):
        S += (t + 1) * _layer_sum(_as_layers(maps_q[t]), _as_layers(maps_g[t]), w, h, layers, lam, fallback)
    return S


def fuse_last_step(maps_q, maps_g, image_size, layers, lam: float, fallback) -> np.ndarray:
    """S [H, W] from each probe's last step map (the forward that chose its last token: the EOS
    step when it stopped, else step ``probe_tokens`` − 1) — the paper's t_end setting."""
    w, h = image_size
    return _layer_sum(_as_layers(maps_q[-1]), _as_layers(maps_g[-1]), w, h, layers, lam, fallback)


def _step_capture_type():
    from ..attention import AttentionCapture

    class StepImageAttention(AttentionCapture):
        """Attention capture over a whole greedy generation: after the prefill and every step, each row's
        head-mean attention of its last query over its image keys in ``layers`` is appended to
        ``maps[request]`` (a list over steps of {layer: [n_image_tokens]})."""

        def start(self, adapter, seqs, tokens):
            super().start(adapter, seqs, tokens)
            self.maps = [[] for _ in seqs]

        def after_forward(self, phase, rows, logits):
            if phase == "prefix":  # prefix rows end before the question: not a step's map
                return
            per = {l: self.image_attention(l) for l in self.layers}
            for k, r in enumerate(rows.request):
                if rows.branch[k] == 0:
                    self.maps[r].append({l: per[l][k].float().cpu() for l in self.layers})

    return StepImageAttention


def probe_maps_all_steps(runner, branches, layers, max_new_tokens: int) -> list:
    """Per branch: greedy generation (single branch, up to ``max_new_tokens``, the runner's EOS)
    with the step maps of ``layers`` captured — a list over steps of {layer: map} — or the
    exception the branch failed with."""
    from ..engine import decode_rows, greedy_chooser

    encs = runner._encode_all(branches, 1)
    out = list(encs)
    ok = [i for i, e in enumerate(encs) if not isinstance(e, Exception)]
    if not ok:
        return out
    limits = [
        min(max_new_tokens, runner.max_positions - encs[i].length) if runner.max_positions else max_new_tokens
        for i in ok
    ]
    hooks = _step_capture_type()(layers=list(layers))
    decode_rows(
        runner.adapter,
        [[encs[i]] for i in ok],
        greedy_chooser,
        limits,
        runner.eos_ids,
        share_prefix=False,
        hooks=hooks,
    )
    for k, i in enumerate(ok):
        out[i] = hooks.maps[k]
    return out


def attention_mask(
    S: np.ndarray, top_percent: float, min_keep_regions: int, outlier_percent: float, strategy: str
) -> tuple[np.ndarray, int, int]:
    """(mask uint8 [H, W], regions kept, regions found) — ``create_attention_mask``."""
    from scipy import ndimage

    thr = np.percentile(S, (1.0 - top_percent) * 100)
    m = (S >= thr).astype(np.uint8)
    labeled, num = ndimage.label(m)
    if num == 0:
        return np.zeros_like(S, dtype=np.uint8), 0, 0
    if strategy == "remove_small":
        sizes = ndimage.sum(m, labeled, range(1, num + 1))
        total = int(m.sum())
        min_size = int(total * outlier_percent / 100) if total > 0 else 1
        kept = num
        for i, size in enumerate(sizes, 1):
            if size < min_size:
                m[labeled == i] = 0
                kept -= 1
        return m, kept, num
    src = m if strategy == "size" else S
    scores = ndimage.sum(src, labeled, range(1, num + 1))
    ranked = sorted(((i + 1, s) for i, s in enumerate(scores)), key=lambda x: x[1], reverse=True)
    keep = {rid for rid, _ in ranked[: max(min_keep_regions, int(num * top_percent))]}
    out = np.zeros_like(m)
    for rid in keep:
        out[labeled == rid] = 1
    return out, len(keep), num


def refine_image(image, mask: np.ndarray):
    """image × mask, cropped to the mask's bounding box, LANCZOS-resized to cover the original."""
    from PIL import Image

    arr = np.array(image)
    masked = Image.fromarray((arr * np.stack([mask] * 3, axis=-1)).astype(np.uint8))
    ys, xs = np.where(mask == 1)
    bbox = (
        (0, 0, mask.shape[1], mask.shape[0])
        if len(ys) == 0
        else (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    )
    crop = masked.crop(bbox)
    cw, ch = crop.size
    ow, oh = image.size
    scale = max(ow / cw, oh / ch)
    return crop.resize((int(cw * scale), int(ch * scale)), Image.LANCZOS), bbox


@dataclass(frozen=True)
class CARVE(Method):
    name = "carve"
    defaults = MappingProxyType(
        {
            "variant": "paper",
            "maps": None,
            "paper_maps": "t_start",
            "probe_tokens": 32,
            "layers": None,
            "lam": 1e-8,
            "top_percent": 0.2,
            "min_keep_regions": 3,
            "outlier_percent": 0.1,
            "version": "v3",
            "general_instruction": GENERAL_INSTRUCTION,
            "suffix": ANSWER_SUFFIX,
            "max_pixels": None,
        }
    )
    nullable = frozenset({"layers", "maps", "max_pixels"})
    param_types = MappingProxyType({"layers": (list, tuple), "maps": (str,), "max_pixels": (int,)})
    #: the attention maps are laid back on one grid per image; the code's final pass puts the
    #: original and the refined image in one prompt (not InstructBLIP, not any-res tiles)
    needs = ("image_grid", "multi_image")

    def validate(self, p):
        super().validate(p)
        if p["version"] not in VERSIONS:
            raise ValueError(
                f"parameter 'version' of method 'carve' must be one of {', '.join(VERSIONS)} "
                f"(the code's v4 is variant='code_v4'), got {p['version']!r}"
            )
        if p["variant"] not in VARIANTS:
            raise ValueError(
                f"parameter 'variant' of method 'carve' must be one of {', '.join(VARIANTS)}, "
                f"got {p['variant']!r}"
            )
        if p["maps"] is not None and p["maps"] not in MAPS:
            raise ValueError(
                f"parameter 'maps' of method 'carve' must be one of {', '.join(MAPS)} (or null: the "
                f"variant's), got {p['maps']!r}"
            )
        if p["paper_maps"] not in MAPS:
            raise ValueError(
                f"parameter 'paper_maps' of method 'carve' must be one of {', '.join(MAPS)}, "
                f"got {p['paper_maps']!r}"
            )
        if p["max_pixels"] is not None and int(p["max_pixels"]) < 56 * 56:
            raise ValueError(
                f"parameter 'max_pixels' of method 'carve' must be >= {56 * 56}, got {p['max_pixels']}"
            )
        if int(p["probe_tokens"]) < 1:
            raise ValueError(
                f"parameter 'probe_tokens' of method 'carve' must be >= 1, got {p['probe_tokens']}"
            )
        if p["layers"] is not None and (
            not isinstance(p["layers"], (list, tuple))
            or not p["layers"]
            or not all(isinstance(i, int) and i >= 0 for i in p["layers"])
        ):
            raise ValueError(
                f"parameter 'layers' of method 'carve' must be a non-empty list of layer "
                f"indices, got {p['layers']!r}"
            )
        if not 0 < float(p["top_percent"]) <= 1:
            raise ValueError(
                f"parameter 'top_percent' of method 'carve' must be in (0, 1], got {p['top_percent']}"
            )

    def prepare(self, items, runner):
        ad = runner.adapter
        ok = self.usable(items, ad)
        if not ok:
            return
        probes = []
        for it in ok:
            r, p = it.request, it.ctx.params
            probes += [
                Branch(prompt=f"{p['general_instruction']} {p['suffix']}", image=r.image, system=r.system),
                self.original(r),
            ]
        n_layers = len(ad.decoder_layers())
        setting = map_setting(ok[0].ctx.params)
        all_steps = setting != "t_start"  # t_end / t_full: the probes generate (capture every step)
        if all_steps:
            p0 = ok[0].ctx.params
            want = default_layers(n_layers) if p0["layers"] is None else list(p0["layers"])
            used = sorted({layer for layer in want if layer < n_layers})
            atts = (
                probe_maps_all_steps(runner, probes, used, int(p0["probe_tokens"]))
                if used
                else [None] * len(probes)
            )
        else:
            atts = runner.image_attention(probes)
        for k, it in enumerate(ok):
            p = it.ctx.params
            ag, aq = atts[2 * k], atts[2 * k + 1]
            bad = ag if isinstance(ag, Exception) else aq if isinstance(aq, Exception) else None
            if bad is not None:
                it.fail(f"CARVE attention probe failed: {bad}")
                continue
            if not all_steps:
                n_layers = aq.shape[0]
            layers = default_layers(n_layers) if p["layers"] is None else list(p["layers"])
            if not any(layer < n_layers for layer in layers):
                it.fail(
                    f"method 'carve': none of the layers {layers} exists (the model has {n_layers} layers)"
                )
                continue
            fallback = None
            if getattr(ad, "layout", None) == "packed":  # Qwen2-VL / Qwen2.5-VL: the grid from image_grid_thw
                enc = ad.encode(self.original(it.request))
                merge = int(getattr(ad.processor.image_processor, "merge_size", 2))
                _, gh, gw = enc.extras["image_grid_thw"][0].tolist()
                fallback = (gh // merge, gw // merge)
            image = it.request.image
            if all_steps:
                fuse = fuse_all_steps if setting == "t_full" else fuse_last_step
                S = fuse(aq, ag, image.size, layers, float(p["lam"]), fallback)
                it.ctx.meta["carve_steps"] = [len(aq), len(ag)]
            else:
                S = fuse_first_step(aq, ag, image.size, layers, float(p["lam"]), fallback)
            mask, kept, found = attention_mask(
                S,
                float(p["top_percent"]),
                int(p["min_keep_regions"]),
                float(p["outlier_percent"]),
                VERSIONS[p["version"]],
            )
            refined, bbox = refine_image(image, mask)
            if p["max_pixels"] is not None:  # the processor's pixel budget of the code (Qwen: 448²)
                from ...protocols.images import cap_pixels

                refined = cap_pixels(refined, int(p["max_pixels"]))
            it.ctx.prepared["refined"] = refined
            it.ctx.meta["carve_bbox"] = list(bbox)
            it.ctx.meta["carve_regions"] = [kept, found]
            it.ctx.meta["carve_layers"] = [layer for layer in layers if layer < n_layers]
            it.ctx.meta["carve_variant"] = p["variant"]
            it.ctx.meta["carve_maps"] = setting
            it.ctx.meta["carve_table1"] = TABLE1.get((p["variant"], setting))

    def branches(self, request, ctx):
        self.require_image(request)
        refined = ctx.prepared["refined"]
        if ctx.params["variant"] == "paper":
            return [Branch(prompt=request.prompt, image=refined, system=request.system, name="refined")]
        # the code's final pass: original + refined in ONE prompt (a multi-image branch), pipeline.py:152
        return [
            Branch(
                prompt=request.prompt,
                image=[request.image, refined],
                system=request.system,
                name="original+refined",
            )
        ]

    def combine(self, logits, step, state):
        return logits[..., 0, :]

    def plausibility(self, logits, step, state):
        return None
