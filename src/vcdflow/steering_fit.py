"""VTI's offline fitted steering directions, fitted once per model by a workflow rule.

Liu, Ye, Zou, "Reducing Hallucinations in Vision-Language Models via Latent Space Steering",
ICLR 2025; official code ``shengliu66/VTI@bb5dfee`` (cited ``file:line`` below).

**Fit set.** Records ``{"image", "question", "value", "h_value", ...}``: an image, the question
"Describe this image in detail.", a clean caption ``value`` and the same caption with
co-occurring objects inserted ``h_value`` (the official
``experiments/data/hallucination_vti_demos.jsonl``: 100 COCO **train2014** images).
``num_demos`` of them are drawn with ``random.Random(seed).sample`` (the official
``random.sample`` after ``set_seed(42)``, ``vti_utils/utils.py:160``, ``run_mmhal_vti.py:167``:
the same draw). For the demo model, :func:`demo_fit_set` builds such records from the demo
world's **train** split (clean = the canonical caption; hallucinated = the canonical caption of the
objects plus the image's most frequent absent same-group categories).

**Visual direction** (``obtain_visual_vti``, ``utils.py:257-325``): for each demo image,
``num_trials`` copies with ``int(mask_ratio · N)`` of its N patches (the tower's patch size;
official 14 px) set to the image's per-channel mean in the processor's normalised space
(``mask_patches``, ``utils.py:46-81``; ``get_demos`` ``:170-177``); the vision tower's hidden
states (all layers + the embedding entry, every token incl. CLS) are averaged over the copies and
the clean image's are subtracted: ``Δ = mean(masked) − clean``. Per demo ``Δ`` is
``[L_v + 1, T, D]``, **reshaped** (not permuted) to ``[T, (L_v + 1)·D]`` as the code does
(``:318``); a rank-1 PCA runs per row of that matrix across the demos (``:321-323``) and the
direction = mean + first principal axis, viewed back to ``[L_v + 1, T, D]``; the embedding entry
is dropped (``run_mmhal_vti.py:65``) → ``[L_v, T, D]``. (The mean part round-trips exactly; the
PCA part is computed on the scrambled rows, as in the code.)

**Textual direction** (``obtain_textual_vti``, ``utils.py:184-230``): for each demo, the LVLM's
last-token hidden states (HF ``hidden_states``: embedding, decoder layers 0…L−2, the final-normed
last layer) on (clean image, template + question + caption) for the clean and the hallucinated
caption (``get_prompts`` ``:84-148``: ``conv.get_prompt() + value``, no space);
``Δ = h(value) − h(h_value)`` flattened, rank-1 PCA across the demos, direction = mean + first
axis viewed to ``[L + 1, D]``, embedding entry dropped (``run_mmhal_vti.py:75``) → ``[L, D]``.
The official fits the textual direction **with the visual intervention already installed**
(``run_mmhal_vti.py:60-78``: ``add_vti_layers`` on the tower before ``obtain_textual_vti``) when
``alpha_image ≠ 0``: ``fit_alpha_image`` (default 0.9, the README's ``alpha_image``) does that
here; 0 fits it without.

PCA: the official ``vti_utils/pca.py`` (centre, ``torch.linalg.svd``, sign of each component from
the largest-|u| entry of the first left singular vector, ``svd_flip``) in float32.

Divergences: the official runs fp16 on a GPU and draws its masks from torch's global generator
after model loading (which may consume draws: **UNVERIFIED** parity of the masks); here a
dedicated generator seeded with ``seed``.

**Qwen2.5-VL's visual direction (not in the official code; this project's equivalent).** The
official per-token direction needs every demo image to have the same tokens: LLaVA's processor
makes every image 336×336 (576 patches + CLS), and the official Qwen-VL path
(``utils.py:134-147`` prompts, ``:265-267, 280-282, 292-294`` ``model.transformer.visual``) runs
Qwen-VL (v1), whose input is a fixed 448×448 (Qwen-VL's paper; its code not read here).
Qwen2.5-VL encodes each image at its own resolution (a ``h × w`` grid of 14-px patches, packed and
window-permuted in the tower, :func:`vcdflow.decoding.steering.qwen_window_layout`). Here:

* the fit runs at one **fit grid** ``vision_grid = [h, w]`` patches (default ``None``: the grid the
  model's own processor gives a 640×480 image — the usual COCO size, the fit images' source;
  34×46 for Qwen2.5-VL-7B's processor by ``smart_resize`` with its published min/max pixels,
  computed, not run here): each demo image is resized to cover ``(w·14, h·14)`` px
  and centre-cropped (as CLIP's processor does for LLaVA's fit: shortest side, centre crop), then
  processed without the processor's own resize (``do_resize=False``: normalisation and patching
  only, so the grid is exactly ``vision_grid``; rows and columns must be multiples of the merge
  size, 2);
* masking is the official ``mask_patches`` on the processor's normalised image (the flattened
  patches turned back into ``[3, H, W]`` by ``adapter.pixels_to_images``): ``int(mask_ratio·N)``
  of the ``N = h·w`` 14-px patches, raster-indexed, set to the per-channel mean;
* the tower's per-layer states (HF ``hidden_states`` layout: the first block's input, then every
  block's output) are taken out of the packed window order into **raster order** of the patch grid
  (the analogue of CLIP's raster token order), so the official ``reshape`` + per-row PCA runs on
  ``[h·w, (L_v + 1)·D]`` exactly as for LLaVA (CLS aside); the direction is stored as a patch grid
  ``[L_v, h, w, D]``;
* at decode time every image's grid is different: the method resamples the grid direction to the
  image's patch grid (bilinear by default; :func:`vcdflow.decoding.steering.resample_grid`) — so a
  patch gets the direction of its relative spatial position. That interpolation is this project's
  choice (a per-position direction on a fixed grid has no other meaning at another resolution);
  ``vision_resample: exact`` in the method refuses any other grid instead.
* the **textual** fit runs on the demo images at their native resolution (what a decode sees),
  with the visual intervention, resampled to each image's grid, installed — the official order.

  Memory (7B, 34×46, 70 demos): the PCA input is [1564, 70, 33·1280] float32 ≈ 18.5 GB of host
  memory (LLaVA-1.5-7B: [577, 70, 25·1024] ≈ 4 GB), decomposed 64 rows at a time; a smaller
  ``vision_grid`` shrinks it proportionally.

The artefact (:func:`save_directions`) is a ``torch.save`` dict ``{"text": [L, D],
"vision": [L_v, T, D] | [L_v, h, w, D] (Qwen2.5-VL) | None, "meta": {...}}``, keyed by model + :func:`fit_key` (the fit config
and the fit set's digest) in the workflow (``workflow/rules/vti.smk``).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:  # torch is imported inside the functions: the workflow imports this module at parse time
    import torch

#: fit settings: README (MMHal run) num_demos 70, mask_ratio 0.99, num_trials 50, seed 42;
#: argparse defaults differ (num_demos 50, alpha_image 0): run_mmhal_vti.py:156-164
FIT_DEFAULTS: dict[str, Any] = {
    "num_demos": 70,
    "num_trials": 50,
    "mask_ratio": 0.99,
    "seed": 42,
    "fit_alpha_image": 0.9,
    "vision": True,
    "text": True,
    "chat_template": None,
    "system": None,
    "vision_grid": None,
}
#: settings added after artefacts were fitted: left out of fit_key while at their default (None),
#: so the keys (file names) of the earlier fits stay valid
_LATE_KEYS = ("vision_grid",)
#: the image size whose processor grid is Qwen2.5-VL's default fit grid (COCO's most common size)
QWEN_FIT_IMAGE_SIZE = (640, 480)

OFFICIAL_QUESTION = "Describe this image in detail."

#: the official fit list, pinned (sha256 and size computed from the file at that commit)
OFFICIAL_FIT_SET = {
    "url": "https://raw.githubusercontent.com/shengliu66/VTI/bb5dfee33a9e555f22af9faa7b3495c0ac3df69e/"
    "experiments/data/hallucination_vti_demos.jsonl",
    "sha256": "5ce467817fc2a29735715fd6793b4927268cfff030e798f9f3a60a1fcb575d0d",
    "size": 145506,
    "source": "shengliu66/VTI@bb5dfee:experiments/data/hallucination_vti_demos.jsonl (100 records)",
}
#: where one COCO train2014 image is served (the fit list names 100 of them)
COCO_TRAIN2014_URL = "http://images.cocodataset.org/train2014/{file}"


def fit_config(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """FIT_DEFAULTS overlaid with ``overrides``; unknown keys raise naming them."""
    cfg = dict(FIT_DEFAULTS)
    bad = sorted(set(overrides or {}) - set(cfg))
    if bad:
        raise ValueError(
            f"unknown VTI fit setting{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))}; "
            f"valid: {', '.join(sorted(cfg))}"
        )
    cfg.update(overrides or {})
    if not 0 <= float(cfg["mask_ratio"]) <= 1:
        raise ValueError(f"VTI fit setting 'mask_ratio' must be in [0, 1], got {cfg['mask_ratio']!r}")
    for k in ("num_demos", "num_trials"):
        if int(cfg[k]) < 1:
            raise ValueError(f"VTI fit setting {k!r} must be >= 1, got {cfg[k]!r}")
    g = cfg["vision_grid"]
    if g is not None:
        if not (
            isinstance(g, (list, tuple)) and len(g) == 2 and all(isinstance(x, int) and x > 0 for x in g)
        ):
            raise ValueError(
                f"VTI fit setting 'vision_grid' must be [rows, columns] of patches (positive "
                f"integers) or null, got {g!r}"
            )
        cfg["vision_grid"] = [int(g[0]), int(g[1])]
    return cfg


def family_fit_defaults(family: str | None, fit_set: str) -> dict[str, Any]:
    """Fit settings that follow from the family and the fit set: the official LLaVA fit prompt is
    ``conv_templates["llava_v1"]`` (``run_mmhal_vti.py:155``: ``--conv-mode llava_v1``), i.e. the
    ``llava_v1`` template with its system text. (Qwen2.5-VL's fit grid defaults from its processor,
    :func:`fit_grid`.)"""
    out: dict[str, Any] = {}
    if fit_set == "official" and family == "llava":
        from .protocols._shared import LLAVA_V1_SYSTEM

        out.update(chat_template="llava_v1", system=LLAVA_V1_SYSTEM)
    return out


def fit_set_identity(fit_set: str) -> str:
    """What names a fit set in :func:`fit_key`: the official list's sha256, or the demo split."""
    if fit_set == "official":
        return "official:" + OFFICIAL_FIT_SET["sha256"]
    if fit_set == "demo":
        return "demo:train"
    raise ValueError(f"VTI fit_set must be 'official' or 'demo', got {fit_set!r}")


def _family(config: Mapping, model: str) -> str | None:
    fam = (config.get("models", {}).get(model) or {}).get("family", "auto")
    if fam != "auto":
        return fam
    from .protocols import family_of_model

    path = (config["models"][model] or {}).get("path", f"resources/models/{model}")
    try:
        return family_of_model(path)
    except ValueError:
        return None  # not downloaded yet: generic settings


def fit_set_of(config: Mapping) -> str:
    """The configured fit set: ``vti.fit_set``, default ``demo`` in the demo world, else ``official``."""
    return str(
        (config.get("vti") or {}).get("fit_set", "demo" if config.get("world") == "demo" else "official")
    )


def settings_for(config: Mapping, model: str) -> dict[str, Any]:
    """The fit settings of ``model`` under a workflow ``config``: :data:`FIT_DEFAULTS`, then
    :func:`family_fit_defaults`, then ``config["vti"]["fit"]`` (validated: unknown keys named)."""
    return fit_config(
        {
            **family_fit_defaults(_family(config, model), fit_set_of(config)),
            **dict((config.get("vti") or {}).get("fit") or {}),
        }
    )


def directions_path(config: Mapping, model: str, benchmark: str | None = None) -> str:
    """Where the workflow keeps ``model``'s fitted directions: ``results/vti/{model}/{fit_key}.pt``
    (``benchmark`` is ignored: the directions are task-agnostic, as the paper says)."""
    key = fit_key(model, settings_for(config, model), fit_set_identity(fit_set_of(config)))
    return f"results/vti/{model}/{key}.pt"


def fit_key(model: str, cfg: Mapping[str, Any], demos_digest: str = "") -> str:
    """12 hex digits identifying (model, fit config, fit-set digest)."""
    fit = {k: v for k, v in dict(cfg).items() if not (k in _LATE_KEYS and v is None)}
    blob = json.dumps({"model": str(model), "fit": fit, "demos": demos_digest}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# --- fit sets --------------------------------------------------------------------------------------
def load_demos(path: str | Path) -> list[dict]:
    """The fit records of a JSON-lines file (the official ``hallucination_vti_demos.jsonl`` format);
    each needs ``image``, ``value`` and ``h_value`` (``question`` defaults to the official one)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            missing = [k for k in ("image", "value", "h_value") if k not in rec]
            if missing:
                raise ValueError(f"{path}:{n}: VTI fit record lacks {', '.join(missing)}")
            rec.setdefault("question", OFFICIAL_QUESTION)
            out.append(rec)
    return out


def select_demos(demos: Sequence[dict], n: int, seed: int) -> list[dict]:
    """``random.sample(demos, n)`` after ``random.seed(seed)`` — the official draw."""
    if n > len(demos):
        raise ValueError(f"VTI fit setting num_demos={n} exceeds the {len(demos)} fit records")
    return random.Random(seed).sample(list(demos), n)


def demo_fit_set(instances: str | Path, n: int | None = None, n_co: int = 2) -> list[dict]:
    """Fit records from the demo world's (train) COCO instances: ``value`` = the canonical caption
    of the image's objects, ``h_value`` = the canonical caption with the ``n_co`` most frequent
    absent categories of the image's majority group added (``co_objects``), question = the
    project's caption instruction. Images without an absent same-group category are skipped."""
    from collections import Counter

    from .data.demo_world import CAPTION_INSTRUCTION, CATEGORIES, GROUPS, captions_for

    data = json.loads(Path(instances).read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    by_img: dict[int, list[str]] = {}
    for a in data["annotations"]:
        by_img.setdefault(a["image_id"], []).append(names[a["category_id"]])
    freq = Counter(n_ for objs in by_img.values() for n_ in set(objs))
    group_of = {c.name: c.group for c in CATEGORIES}
    out = []
    for img in sorted(data["images"], key=lambda r: r["id"]):
        objs = sorted(set(by_img.get(img["id"], [])))
        if not objs:
            continue
        group = Counter(group_of[o] for o in objs).most_common(1)[0][0]
        absent = sorted((c for c in GROUPS[group] if c not in objs), key=lambda c: (-freq[c], c))[:n_co]
        if not absent:
            continue
        out.append(
            {
                "id": str(img["id"]),
                "image": img["file_name"],
                "question": CAPTION_INSTRUCTION,
                "value": captions_for(objs)[0],
                "h_value": captions_for(objs + absent)[0],
                "co_objects": absent,
            }
        )
        if n is not None and len(out) >= n:
            break
    return out


# --- the official pieces ---------------------------------------------------------------------------
def mask_patches(img: torch.Tensor, indices, patch: int) -> torch.Tensor:
    """``img`` [C, H, W] with the listed patches set to the per-channel mean (``utils.py:46-81``)."""
    import torch

    out = img.clone()
    mean = img.mean(dim=(1, 2), keepdim=True)
    per_row = img.shape[2] // patch
    for i in indices.tolist() if torch.is_tensor(indices) else indices:
        r, c = divmod(int(i), per_row)
        out[:, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] = mean.expand(-1, patch, patch)
    return out


def pca_direction(X: torch.Tensor, rows: int = 64) -> torch.Tensor:
    """mean + first principal axis of ``X`` [n, F] (→ [F]) or per leading row of [B, n, F]
    (→ [B, F]): the official ``PCA(n_components=1).fit`` and ``(components_.sum(1) + mean_)``
    (``pca.py:24-39``, ``utils.py:228, 323``). The leading rows are decomposed ``rows`` at a time
    (each row's SVD is independent; a Qwen2.5-VL-7B visual fit is [1564, 70, 42240])."""
    import torch

    squeeze = X.ndim == 2
    X = X.unsqueeze(0) if squeeze else X
    out = []
    for c in range(0, X.shape[0], rows):
        x = X[c : c + rows].float()
        mean = x.mean(1, keepdim=True)
        U, S, Vh = torch.linalg.svd(x - mean, full_matrices=False)
        # svd_flip (pca.py:6-17) for the first component: the sign of u's largest-|.| entry
        idx = U[:, :, 0].abs().argmax(1)
        sign = torch.sign(U[torch.arange(U.shape[0]), idx, 0])
        out.append(Vh[:, 0, :] * sign.unsqueeze(-1) + mean[:, 0, :])
    d = torch.cat(out)
    return d[0] if squeeze else d


def patch_size(adapter) -> int:
    vc = getattr(adapter.config, "vision_config", None)
    p = getattr(vc, "patch_size", None)
    if p is None:
        raise ValueError(f"no vision patch size in the {adapter.family} config")
    return int(p)


def encode_full_text(adapter, text: str, image, **processor_kwargs) -> Any:
    """An :class:`~vcdflow.models.adapters.Encoded` of an already templated ``text`` + ``image``
    through the processor (as ``adapter.encode`` does for a branch; ``processor_kwargs`` passed on,
    e.g. ``do_resize=False``)."""
    import torch

    from .models.adapters import Encoded

    out = adapter.processor(text=[text], images=[image], return_tensors="pt", **processor_kwargs)
    extras = {
        k: v
        for k, v in out.items()
        if k not in ("input_ids", "attention_mask", "pixel_values") and isinstance(v, torch.Tensor)
    }
    return Encoded(
        input_ids=out["input_ids"][0].long(), pixel_values=out["pixel_values"], extras=extras, text=text
    )


def visual_direction(
    adapter, clean: Sequence[Any], num_trials: int, mask_ratio: float, gen: torch.Generator, chunk: int = 16
) -> torch.Tensor:
    """[L_v, T, D] from the encoded clean demo rows ``clean`` (``obtain_visual_vti``); Qwen2.5-VL
    (every row at the same fit grid ``h × w``): ``[L_v, h, w, D]``."""
    import torch

    from .decoding.steering import is_packed_tower, vision_probe

    p = patch_size(adapter)
    fit, grid = None, None
    for k, enc in enumerate(clean):
        # the processor's normalised image [3, H, W] (Qwen2.5-VL: its flattened patches unfolded)
        img = adapter.pixels_to_images(enc.pixel_values.float(), enc.extras)[0]
        n_tok = int(img.shape[-1] * img.shape[-2] / p**2)
        if is_packed_tower(adapter):
            g = (img.shape[-2] // p, img.shape[-1] // p)
            if grid is not None and g != grid:
                raise ValueError(
                    f"VTI visual fit: demo images at patch grids {list(grid)} and {list(g)}; the fit "
                    "needs one grid (fit setting 'vision_grid')"
                )
            grid = g
        total = None  # running sum over the masked copies, chunk by chunk (a 7B tower: ~60 MB per copy)
        for c in range(0, num_trials, chunk):
            masked = []
            for _ in range(min(chunk, num_trials - c)):
                idx = torch.randperm(n_tok, generator=gen)[: int(mask_ratio * n_tok)]
                px = adapter.images_to_pixels(mask_patches(img, idx, p).unsqueeze(0), enc.extras)
                masked.append(replace(enc, pixel_values=px.to(enc.pixel_values.dtype)))
            part = torch.stack(vision_probe(adapter, masked, chunk=chunk)).sum(0)
            total = part if total is None else total + part
        h_masked = total / num_trials  # [L_v+1, T, D]
        h_clean = vision_probe(adapter, [enc])[0]
        n_layers, n_tokens, _ = h_clean.shape
        delta = h_masked.reshape(n_tokens, -1) - h_clean.reshape(n_tokens, -1)
        if fit is None:  # [T, n_demos, (L_v+1)·D], filled in place (no second copy of a list + stack)
            fit = torch.empty(n_tokens, len(clean), delta.shape[1], dtype=delta.dtype)
        if delta.shape[0] != fit.shape[0]:
            raise ValueError(
                f"VTI visual fit: demo images with {fit.shape[0]} and {delta.shape[0]} vision tokens"
            )
        fit[:, k] = delta
        del delta, h_masked, total
    d = pca_direction(fit).view(n_layers, n_tokens, -1)[1:]
    return d if grid is None else d.reshape(n_layers - 1, grid[0], grid[1], -1)


def fit_grid(adapter, cfg: Mapping[str, Any]) -> tuple[int, int]:
    """Qwen2.5-VL's fit grid (patch rows, columns): ``vision_grid``, else the grid the model's
    processor gives a :data:`QWEN_FIT_IMAGE_SIZE` image."""
    if cfg.get("vision_grid"):
        return int(cfg["vision_grid"][0]), int(cfg["vision_grid"][1])
    from PIL import Image

    out = adapter.processor.image_processor(
        images=[Image.new("RGB", QWEN_FIT_IMAGE_SIZE)], return_tensors="pt"
    )
    _, h, w = out["image_grid_thw"][0].tolist()
    return int(h), int(w)


def fit_image(img, grid: tuple[int, int], patch: int):
    """``img`` resized to cover ``grid`` × ``patch`` pixels (bicubic) and centre-cropped to it."""
    from PIL import Image

    W, H = grid[1] * patch, grid[0] * patch
    s = max(W / img.width, H / img.height)
    w, h = max(W, round(img.width * s)), max(H, round(img.height * s))
    im = img.resize((w, h), Image.BICUBIC)
    left, top = (w - W) // 2, (h - H) // 2
    return im.crop((left, top, left + W, top + H))


def textual_direction(adapter, pairs: Sequence[tuple[Any, Any]], chunk: int = 8) -> torch.Tensor:
    """[L, D] from (clean-caption, hallucinated-caption) encoded rows (``obtain_textual_vti``)."""
    import torch

    from .decoding.steering import residual_probe

    rows = [r for pr in pairs for r in pr]
    outs = residual_probe(adapter, rows, chunk=chunk)
    norm = adapter.final_norm()
    emb = adapter.embed_tokens
    hs = []
    for r, o in zip(rows, outs):
        with torch.inference_mode():
            e = emb(r.input_ids[-1:].to(adapter.device)).float().cpu()  # hidden_states[0] at the last token
            last = norm(o[-1:].to(adapter.device, adapter.dtype)).float().cpu()  # HF's normed final entry
        hs.append(torch.cat([e, o[:-1], last]))  # [L+1, D]
    deltas = [(hs[2 * k] - hs[2 * k + 1]).reshape(-1) for k in range(len(pairs))]
    d = pca_direction(torch.stack(deltas)).view(hs[0].shape)
    return d[1:]


def fit_vti(
    vlm,
    demos: Sequence[dict],
    image_dir: str | Path,
    cfg: Mapping[str, Any] | None = None,
    model_name: str = "",
    demos_digest: str = "",
    progress=None,
    extra_meta: Mapping | None = None,
) -> dict:
    """Fit VTI's directions for ``vlm`` from the fit records ``demos`` (images under
    ``image_dir``). Returns the artefact dict (see the module docstring)."""
    import torch

    from PIL import Image

    from .decoding.steering import ActivationSteering

    cfg = fit_config(cfg)
    ad = vlm.adapter
    fam = getattr(ad, "family", None)
    do_vision = bool(cfg["vision"])
    packed = getattr(ad, "layout", None) == "packed"
    grid = fit_grid(ad, cfg) if packed and do_vision else None
    if grid is not None:
        m = int(ad.config.vision_config.spatial_merge_size)
        if grid[0] % m or grid[1] % m:
            raise ValueError(
                f"VTI fit setting 'vision_grid' {list(grid)}: rows and columns must be multiples of the "
                f"tower's merge size {m}"
            )
    chosen = select_demos(demos, int(cfg["num_demos"]), int(cfg["seed"]))
    prev_template = ad.chat_template
    if cfg["chat_template"]:
        ad.chat_template = cfg["chat_template"]
    say = progress or (lambda msg: None)
    try:
        clean, pairs = [], []
        for rec in chosen:
            with Image.open(Path(image_dir) / rec["image"]) as im:
                img = im.convert("RGB")
            base = ad.build_text(rec.get("question", OFFICIAL_QUESTION), True, cfg["system"])
            pos = encode_full_text(ad, base + rec["value"], img)
            neg = encode_full_text(ad, base + rec["h_value"], img)
            if grid is not None:  # Qwen2.5-VL: the visual fit at the fit grid (module docstring)
                enc = encode_full_text(
                    ad, base + rec["value"], fit_image(img, grid, patch_size(ad)), do_resize=False
                )
                got = tuple(int(x) for x in enc.extras["image_grid_thw"][0].tolist())
                if got != (1, *grid):
                    raise RuntimeError(
                        f"VTI fit: the processor made a {got[1]}x{got[2]} patch grid of a "
                        f"{list(grid)} fit image (do_resize=False ignored?)"
                    )
                clean.append(enc)
            else:
                clean.append(pos)
            pairs.append((pos, neg))
        gen = torch.Generator().manual_seed(int(cfg["seed"]))
        vision = None
        if do_vision:
            say(f"visual direction: {len(clean)} images x {cfg['num_trials']} masked copies")
            with torch.inference_mode():
                vision = visual_direction(ad, clean, int(cfg["num_trials"]), float(cfg["mask_ratio"]), gen)
        text = None
        if cfg["text"]:
            say(f"textual direction: {len(pairs)} caption pairs")
            hooks = None
            if vision is not None and float(cfg["fit_alpha_image"]) != 0:
                hooks = ActivationSteering(
                    vision_vectors=dict(enumerate(vision)), vision_lam=0.1 * float(cfg["fit_alpha_image"])
                )
                hooks.start(ad, [], [])
            try:
                text = textual_direction(ad, pairs)
            finally:
                if hooks is not None:
                    hooks.finish()
    finally:
        ad.chat_template = prev_template
    meta = {
        "model": model_name,
        "family": fam,
        "fit": cfg,
        "fit_key": fit_key(model_name, cfg, demos_digest),
        "demos_digest": demos_digest,
        "demo_ids": [str(r.get("id", r["image"])) for r in chosen],
        "n_layers": len(ad.decoder_layers()),
        "hidden_size": int(ad.text_config.hidden_size),
        "vision_grid": None if grid is None else list(grid),
        "source": "shengliu66/VTI@bb5dfee vti_utils/utils.py obtain_visual_vti / obtain_textual_vti",
        **dict(extra_meta or {}),
    }
    return {"text": text, "vision": vision, "meta": meta}


def save_directions(art: dict, path: str | Path) -> Path:
    """Write the artefact atomically (a temporary file, then rename)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {"text": art.get("text"), "vision": art.get("vision"), "meta": dict(art.get("meta") or {})}, tmp
    )
    tmp.replace(path)
    return path


_CACHE: dict = {}


def load_directions(path: str | Path) -> dict:
    """The artefact at ``path`` (cached per path, size and mtime); ``ValueError`` naming the path
    when it is missing or not a VTI artefact."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise ValueError(
            f"VTI directions file {str(p)!r} does not exist (fit it with the workflow rule "
            f"fit_vti or vcdflow.steering_fit.fit_vti)"
        )
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        art = torch.load(p, map_location="cpu", weights_only=True)
        if not isinstance(art, dict) or "text" not in art or "vision" not in art:
            raise ValueError(f"{str(p)!r} is not a VTI directions file (expected keys text, vision, meta)")
        _CACHE.clear()
        _CACHE[key] = art
    return _CACHE[key]


def fetch_fit_images(demos: Sequence[dict], dest: str | Path, *, offline: bool = False, log=print) -> Path:
    """Download the fit records' COCO train2014 images into ``dest`` (one file each, resumable,
    atomically placed). COCO publishes no per-image checksums: the first download is unverified
    (logged), and ``dest/SHA256SUMS.json`` records each file's sha256 so every later run (and
    ``offline``, which only verifies pre-placed files) checks the bytes against it."""
    from .data.download import download, hash_file

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    sums_path = dest / "SHA256SUMS.json"
    sums = json.loads(sums_path.read_text()) if sums_path.is_file() else {}
    missing, new = [], 0
    for rec in demos:
        name = rec["image"]
        target = dest / name
        known = sums.get(name)
        if offline and not target.is_file():
            missing.append(name)
            continue
        if not target.is_file():
            download(COCO_TRAIN2014_URL.format(file=name), target, sha256=known, progress=False)
        got = hash_file(target, ["sha256"])["sha256"]
        if known is None:
            sums[name] = got
            new += 1
        elif known != got:
            raise ValueError(f"{target}: sha256 {got} differs from the recorded {known} ({sums_path})")
    if missing:
        raise FileNotFoundError(
            f"offline: {len(missing)} VTI fit images missing under {dest}: "
            f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}"
        )
    if new:
        log(
            f"{new} COCO train2014 images had no recorded checksum (COCO publishes none): downloaded "
            f"UNVERIFIED; their sha256 is now recorded in {sums_path}"
        )
    sums_path.write_text(json.dumps(dict(sorted(sums.items())), indent=1))
    return dest


def main(argv: Sequence[str] | None = None) -> Path:
    """``python -m vcdflow.steering_fit MODEL_DIR FIT_SET.jsonl IMAGE_DIR OUT.pt [--fit JSON]``:
    fit and save VTI's directions (the library path the workflow rule ``fit_vti`` takes)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m vcdflow.steering_fit", description=main.__doc__)
    ap.add_argument("model")
    ap.add_argument("fit_set", help="JSON lines: image, question, value, h_value")
    ap.add_argument("images", help="folder holding the records' images")
    ap.add_argument("out")
    ap.add_argument("--fit", default="{}", help="fit settings as JSON (see FIT_DEFAULTS)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    a = ap.parse_args(argv)
    from .io import file_digest
    from .models import load_vlm

    vlm = load_vlm(a.model, device=a.device, dtype=a.dtype)
    art = fit_vti(
        vlm,
        load_demos(a.fit_set),
        a.images,
        json.loads(a.fit),
        model_name=str(a.model),
        demos_digest=file_digest(a.fit_set),
        progress=print,
        extra_meta={"fit_set_md5": file_digest(a.fit_set)},
    )
    return save_directions(art, a.out)


if __name__ == "__main__":  # pragma: no cover
    main()
