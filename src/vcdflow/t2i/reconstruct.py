"""ConVis step 2: render every caption with the T2I pipeline, cached; attach them to decode items.

Each caption record (:mod:`vcdflow.t2i.captions`) becomes one PNG in a content-addressed cache::

    <cache_dir>/<model>/<t2i hash>/<image key>__s<caption seed>__<sha1(caption)[:12]>.png

keyed by (caption model, image, caption seed, T2I config hash — :func:`vcdflow.t2i.pipeline.t2i_hash`)
plus a digest of the caption text, so a changed caption never reuses a stale image. The image
is written atomically (temp file + rename, :func:`vcdflow.io.atomic_path`) with the caption and
its key in PNG text chunks. On a rerun every listed file is checked (:func:`check_image`:
decodes fully, right size, caption chunk matches): a good file is reused without loading the
pipeline, a missing or corrupt one is (re)generated. Random noise for reconstruction ``k`` of
an image comes from its own ``torch.Generator`` seeded with SHA-256 of (model, key, caption
seed) (:func:`t2i_seed`), so an image does not depend on its batch.

Outputs smaller than the benchmark images (the demo model renders 16×16) are resized with
``t2i.output_size``: an int (square), ``[w, h]``, ``"original"`` (the captioned image's own
size) or null (as rendered), using ``t2i.resample`` (default bicubic).

The manifest (JSON) maps each image key to its n reconstruction paths in caption-seed order::

    {"model": str, "t2i_hash": str, "t2i": {...}, "n_captions": int,
     "images": {key: [path, ...]}, "captions": {key: [caption, ...]}}

:func:`attach_reconstructions` adds ``contrast_images`` (those paths) to decode items; an image
missing from the manifest, or a listed file that is gone, is an error naming the image.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from vcdflow.io import atomic_path, read_json, write_json

from .captions import image_key
from .pipeline import load_t2i, normalize_t2i_config, t2i_hash

log = logging.getLogger("vcdflow.t2i.reconstruct")

__all__ = [
    "t2i_seed",
    "safe_name",
    "reconstruction_path",
    "check_image",
    "reconstruct",
    "read_manifest",
    "attach_reconstructions",
    "run_reconstruct",
]

_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4}


def t2i_seed(model: str, key: str, caption_seed: int) -> int:
    """63-bit seed from SHA-256 of ``"convis-t2i\\x1f<model>\\x1f<key>\\x1f<caption seed>"``."""
    blob = f"convis-t2i\x1f{model}\x1f{key}\x1f{int(caption_seed)}".encode("utf-8")
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & ((1 << 63) - 1)


def safe_name(text: str) -> str:
    """A file-name-safe form of ``text``; when characters had to be replaced, an 8-hex digest of
    the original is appended so that distinct keys never collide (``a/b`` vs ``a_b``)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._") or "_"
    if safe != str(text):
        safe += "-" + hashlib.sha1(str(text).encode("utf-8")).hexdigest()[:8]
    return safe


def _caption_digest(caption: str) -> str:
    return hashlib.sha1(caption.encode("utf-8")).hexdigest()[:12]


def reconstruction_path(
    cache_dir: str | os.PathLike, model: str, t2i_hash_: str, key: str, caption_seed: int, caption: str
) -> Path:
    """Cache file of one reconstruction (see the module docstring)."""
    return (
        Path(cache_dir)
        / safe_name(model)
        / t2i_hash_
        / f"{safe_name(key)}__s{int(caption_seed)}__{_caption_digest(caption)}.png"
    )


def check_image(
    path: str | os.PathLike, size: tuple[int, int] | None = None, caption: str | None = None
) -> str | None:
    """``None`` when ``path`` is a complete PNG (fully decodable), of ``size`` (if given) and
    carrying ``caption`` in its text chunk (if given); else the reason it is not."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as im:
            im.load()
            got_size, text = im.size, dict(getattr(im, "text", {}) or {})
    except Exception as exc:  # noqa: BLE001 - any decode failure means corrupt
        return f"unreadable ({type(exc).__name__}: {exc})"
    if size is not None and tuple(got_size) != tuple(size):
        return f"size {got_size} != expected {tuple(size)}"
    if caption is not None and text.get("caption") != caption:
        return "caption text chunk does not match"
    return None


def _target_size(cfg: dict, image_path: str | None, rendered: tuple[int, int] | None = None):
    osz = cfg["output_size"]
    if osz is None:
        return rendered
    if osz == "original":
        from PIL import Image

        if not image_path:
            raise ValueError("t2i.output_size 'original' needs the captioned image's path")
        try:
            with Image.open(image_path) as im:
                return im.size
        except Exception as exc:  # noqa: BLE001
            raise FileNotFoundError(f"cannot read original image {image_path} for its size: {exc}") from exc
    if isinstance(osz, int):
        return (osz, osz)
    return (int(osz[0]), int(osz[1]))


def _save_png(img, dest: Path, caption: str, meta: dict) -> None:
    import json

    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt("caption", caption)
    info.add_itxt("convis", json.dumps(meta, sort_keys=True))
    with atomic_path(dest) as tmp:
        img.save(tmp, format="PNG", pnginfo=info)


def _group(captions: Iterable[dict], n_captions: int | None) -> tuple[dict[str, list[dict]], int]:
    by_key: dict[str, list[dict]] = {}
    for rec in captions:
        for field in ("key", "caption_seed", "caption"):
            if field not in rec:
                raise ValueError(f"caption record {rec.get('item_id')!r} lacks {field!r}")
        by_key.setdefault(str(rec["key"]), []).append(rec)
    errors = {k: r for k, recs in by_key.items() for r in recs if r.get("error")}
    if errors:
        names = ", ".join(
            f"{r.get('image') or k} (seed {r['caption_seed']}: {r['error']})"
            for k, r in list(errors.items())[:5]
        )
        raise ValueError(
            f"captioning failed for {len(errors)} image(s): {names}; fix the image(s) and rerun convis_captions"
        )
    n = n_captions
    for k, recs in by_key.items():
        recs.sort(key=lambda r: int(r["caption_seed"]))
        seeds = [int(r["caption_seed"]) for r in recs]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"image {k}: caption seed listed twice ({seeds})")
        if n is None:
            n = len(recs)
        if seeds != list(range(n)):
            raise ValueError(
                f"image {recs[0].get('image') or k}: expected caption seeds 0..{n - 1}, got {seeds}"
            )
    return by_key, int(n or 0)


def reconstruct(
    captions: Sequence[dict],
    t2i_cfg: dict,
    manifest_path: str | os.PathLike,
    *,
    model: str,
    cache_dir: str | os.PathLike,
    n_captions: int | None = None,
    device: str = "cpu",
    t2i=None,
    loader: Callable | None = None,
    progress: bool = True,
) -> dict:
    """Render every caption (cached), write the manifest, return ``{"manifest", "stats"}``.

    ``t2i``: an already loaded :class:`vcdflow.t2i.pipeline.Text2Image` (tests); else
    ``loader(cfg, device)`` (default :func:`vcdflow.t2i.pipeline.load_t2i`) is called once, and
    only if at least one image must be rendered. ``stats`` counts ``cached``, ``generated`` (was
    missing) and ``regenerated`` (was corrupt) images.
    """
    cfg = normalize_t2i_config(t2i_cfg)
    thash = t2i_hash(cfg)
    by_key, n = _group(captions, n_captions)
    resample = _RESAMPLE[cfg["resample"]]
    jobs = []  # (rec, dest, size or None)
    images: dict[str, list[str]] = {}
    caps: dict[str, list[str]] = {}
    stats = {"cached": 0, "generated": 0, "regenerated": 0}
    for key, recs in by_key.items():
        images[key], caps[key] = [], []
        for rec in recs:
            dest = reconstruction_path(cache_dir, model, thash, key, rec["caption_seed"], rec["caption"])
            size = _target_size(cfg, rec.get("image_path")) if cfg["output_size"] is not None else None
            reason = check_image(dest, size, rec["caption"])
            if reason is None:
                stats["cached"] += 1
            else:
                if reason != "missing":
                    log.warning(
                        "regenerating %s (image %s, seed %s): %s", dest, key, rec["caption_seed"], reason
                    )
                    dest.unlink(missing_ok=True)
                    stats["regenerated"] += 1
                else:
                    stats["generated"] += 1
                jobs.append((rec, dest, size))
            images[key].append(str(dest))
            caps[key].append(rec["caption"])
    if jobs:
        if t2i is None:
            t2i = (loader or load_t2i)(cfg, device)
        bs = int(cfg["batch_size"])
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=f"T2I {model}", unit="img", disable=not progress)
        for start in range(0, len(jobs), bs):
            chunk = jobs[start : start + bs]
            gens = [
                torch.Generator().manual_seed(t2i_seed(model, str(rec["key"]), rec["caption_seed"]))
                for rec, _, _ in chunk
            ]
            outs = t2i([rec["caption"] for rec, _, _ in chunk], gens)
            for (rec, dest, size), img in zip(chunk, outs):
                img = img.convert("RGB")
                if size is not None and tuple(img.size) != tuple(size):
                    img = img.resize(tuple(size), resample)
                meta = {
                    "model": model,
                    "key": str(rec["key"]),
                    "caption_seed": int(rec["caption_seed"]),
                    "t2i_hash": thash,
                    "seed": t2i_seed(model, str(rec["key"]), rec["caption_seed"]),
                }
                _save_png(img, dest, rec["caption"], meta)
                reason = check_image(dest, size, rec["caption"])
                if reason is not None:
                    raise OSError(
                        f"reconstruction {dest} of image {rec['key']} failed its check after writing: {reason}"
                    )
            bar.update(len(chunk))
        bar.close()
    manifest = {
        "model": model,
        "t2i_hash": thash,
        "t2i": cfg,
        "n_captions": n,
        "images": images,
        "captions": caps,
    }
    write_json(manifest_path, manifest)
    log.info("reconstructions for %s: %s -> %s", model, stats, manifest_path)
    return {"manifest": manifest, "stats": stats}


def read_manifest(path: str | os.PathLike) -> dict:
    """Read a manifest written by :func:`reconstruct` (an error names the file when malformed)."""
    m = read_json(path)
    if not isinstance(m, dict) or not isinstance(m.get("images"), dict):
        raise ValueError(f"{path}: not a ConVis reconstruction manifest (no 'images' mapping)")
    m.setdefault("_path", str(path))
    return m


def attach_reconstructions(
    items: Sequence[dict], manifest: dict | str | os.PathLike, *, check_files: bool = True
) -> list[dict]:
    """Copies of ``items`` with ``contrast_images`` = the manifest's paths for each item's image.

    ``manifest``: a dict from :func:`reconstruct`/:func:`read_manifest` or a manifest path. An
    image absent from the manifest → ``KeyError`` naming the image, its key and the manifest;
    with ``check_files`` a listed file that does not exist → ``FileNotFoundError`` naming the
    image and the file (a corrupt file fails when the decoder opens it, naming the file).
    """
    if not isinstance(manifest, dict):
        manifest = read_manifest(manifest)
    where = manifest.get("_path", "the manifest")
    table = manifest["images"]
    out = []
    for it in items:
        key = image_key(it)
        paths = table.get(key)
        if not paths:
            raise KeyError(
                f"image {it.get('image') or key} (key {key!r}, item {it.get('item_id')!r}) has no "
                f"ConVis reconstructions in {where}; rerun the convis_reconstruct step"
            )
        if check_files:
            for p in paths:
                if not Path(p).is_file():
                    raise FileNotFoundError(
                        f"reconstruction {p} of image {it.get('image') or key} (item "
                        f"{it.get('item_id')!r}) is missing; rerun the convis_reconstruct step"
                    )
        new = dict(it)
        new["contrast_images"] = list(paths)
        out.append(new)
    return out


def run_reconstruct(
    caption_files: Sequence[str | os.PathLike],
    t2i_cfg: dict,
    manifest_path: str | os.PathLike,
    *,
    model: str,
    cache_dir: str | os.PathLike,
    n_captions: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Workflow entry: all caption shards of one (benchmark, model) → cached renders + manifest."""
    from .captions import read_captions, resolve_device

    return reconstruct(
        read_captions(caption_files),
        t2i_cfg,
        manifest_path,
        model=model,
        cache_dir=cache_dir,
        n_captions=n_captions,
        device=resolve_device(device),
        progress=progress,
    )


def convis_extra_images(grid, labels, result_files, manifests) -> dict:
    """``{(method_label, item_id): [reconstruction paths]}`` for the report's examples.

    ``grid``: dicts with benchmark/split/model/method/seed; ``labels``: ConVis method labels;
    ``result_files``: ``(benchmark, split, model, method, seed) -> path``; ``manifests``: the
    manifest paths (``.../{benchmark}/{model}.json``).
    """
    from ..io import read_jsonl
    from .captions import image_key

    tables = {}
    for path in manifests:
        path = Path(path)
        tables[(path.parent.name, path.stem)] = read_manifest(path)["images"]
    extra = {}
    for g in grid:
        if g["method"] not in labels:
            continue
        table = tables.get((g["benchmark"], g["model"]))
        key = (g["benchmark"], g["split"], g["model"], g["method"], int(g["seed"]))
        if table is None or key not in result_files or not Path(result_files[key]).exists():
            continue
        for rec in read_jsonl(result_files[key]):
            paths = table.get(image_key(rec))
            if paths:
                extra[(g["method"], rec["item_id"])] = list(paths)
    return extra
