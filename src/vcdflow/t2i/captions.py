"""ConVis step 1: the VLM captions each benchmark image ``n`` times (nucleus sampling).

ConVis (Park et al., AAAI 2025; ``yejipark-m/ConVis`` ``run_scripts/caption_generation.py``)
asks the model itself "Please describe this image in detail." and samples with
temperature T = 0.7, top-p = 0.9, up to 256 new tokens, once per seed (n = 4 seeds); the
captions are rendered by a text-to-image model (:mod:`vcdflow.t2i.reconstruct`). The repo
post-processes each caption by splitting it at ``"."`` and dropping every sentence that
contains ``"unk"`` (meant for ``<unk>`` tokens; note that it also drops words like "trunk"),
then re-joining with ``"."`` — :func:`clean_caption`, on by default (``drop_unk_sentences``).

Seeding: caption ``k`` of an image is decoded with ``generate(..., method="sample", seed=k)``
and ``item_id = "convis-caption/<model>/<image key>"``, so the engine's sampling stream is a
function of (caption seed, model, image) only — not of the batch or shard it runs in.

Output: one JSON-lines file per shard, one record per (image, caption seed), in image order
then seed order::

    {"item_id": "<key>/s<k>", "key": str, "image": str, "image_id": int|str|null,
     "image_path": str, "caption_seed": int, "caption": str, "raw": str, "model": str,
     "error": str|null, "n_tokens": int, "settings_hash": str}

Resumable: finished records are appended to ``<output>.partial`` after every batch (the
checkpoint of :class:`vcdflow.checkpoint.Checkpoint`, whose header holds the settings hash; a
partial file written under other settings is discarded). A complete output with the same
settings hash is reused as is.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

from vcdflow.io import config_hash, read_jsonl

log = logging.getLogger("vcdflow.t2i.captions")

__all__ = [
    "CAPTION_PROMPT",
    "CAPTION_DEFAULTS",
    "image_key",
    "convis_images",
    "clean_caption",
    "caption_item_id",
    "caption_settings",
    "caption_images",
    "read_captions",
    "resolve_device",
    "benchmark_images",
    "run_caption_shard",
]

CAPTION_PROMPT = "Please describe this image in detail."
#: ConVis' captioning settings (caption_generation.py with --sample; n = 4 seeds).
CAPTION_DEFAULTS = {
    "n_captions": 4,
    "prompt": CAPTION_PROMPT,
    "temperature": 0.7,
    "top_p": 0.9,
    "max_new_tokens": 256,
    "drop_unk_sentences": True,
}


def image_key(item: dict) -> str:
    """The key of an item's image: ``str(image_id)`` when the item has one, else its ``image``.

    Items of different splits that show the same image share the key (and so the captions and
    reconstructions). MME's ``image_id`` is ``"<subtask>/<file>"``, unique per image."""
    iid = item.get("image_id")
    if iid is not None and str(iid) != "":
        return str(iid)
    if item.get("image"):
        return str(item["image"])
    raise ValueError(f"item {item.get('item_id')!r} has neither 'image_id' nor 'image'")


def convis_images(items: Iterable[dict]) -> list[dict]:
    """Distinct images of ``items`` (first-appearance order): ``key, image, image_id, image_path``.

    Two items with one key but different image files → ``ValueError`` naming both."""
    out: dict[str, dict] = {}
    for it in items:
        key = image_key(it)
        path = it.get("image_path")
        if not path:
            raise ValueError(f"item {it.get('item_id')!r} has no 'image_path'")
        if key in out:
            if out[key]["image_path"] != str(path):
                raise ValueError(f"image key {key!r} names two files: {out[key]['image_path']} and {path}")
            continue
        out[key] = {
            "key": key,
            "image": it.get("image"),
            "image_id": it.get("image_id"),
            "image_path": str(path),
        }
    return list(out.values())


def clean_caption(text: str, drop_unk_sentences: bool = True) -> str:
    """ConVis' caption clean-up: split at ``"."``, drop sentences containing ``"unk"``, re-join
    with ``"."``; then strip whitespace. ``drop_unk_sentences=False`` only strips."""
    if drop_unk_sentences:
        text = ".".join(s for s in text.split(".") if "unk" not in s)
    return text.strip()


def caption_item_id(model: str, key: str) -> str:
    """The engine ``item_id`` of an image's captions (seeds the sampling stream with the seed)."""
    return f"convis-caption/{model}/{key}"


def caption_settings(model: str, settings: dict | None = None) -> dict:
    """The normalised caption settings (defaults: :data:`CAPTION_DEFAULTS`) plus the model name."""
    s = dict(CAPTION_DEFAULTS)
    extra = sorted(set(settings or {}) - set(CAPTION_DEFAULTS) - {"batch_size", "n_shards"})
    if extra:
        raise ValueError(
            f"unknown caption setting(s) {', '.join(extra)}; valid: {', '.join(sorted(CAPTION_DEFAULTS))}"
        )
    s.update({k: v for k, v in (settings or {}).items() if k in CAPTION_DEFAULTS})
    if int(s["n_captions"]) < 1:
        raise ValueError(f"n_captions must be >= 1, got {s['n_captions']!r}")
    s["n_captions"] = int(s["n_captions"])
    s["max_new_tokens"] = int(s["max_new_tokens"])
    s["temperature"] = float(s["temperature"])
    s["top_p"] = float(s["top_p"])
    s["model"] = str(model)
    return s


def _complete(output: Path, want: list[str], shash: str) -> bool:
    if not output.is_file():
        return False
    try:
        recs = read_jsonl(output)
    except ValueError:
        return False
    return [r.get("item_id") for r in recs] == want and all(r.get("settings_hash") == shash for r in recs)


def caption_images(
    vlm,
    images: Sequence[dict],
    output: str | os.PathLike,
    *,
    model: str,
    settings: dict | None = None,
    batch_size: int = 8,
    generate_fn: Callable | None = None,
    progress: bool = True,
) -> Path:
    """Caption ``images`` (from :func:`convis_images`) ``n_captions`` times each into ``output``.

    ``vlm`` is loaded lazily by the caller: pass a callable returning the VLM to avoid loading
    it when everything is already done (a ``VLM`` object works too). ``generate_fn`` defaults to
    :func:`vcdflow.decoding.generate`. Returns ``output``.
    """
    from vcdflow.checkpoint import Checkpoint

    s = caption_settings(model, settings)
    shash = config_hash(s)
    output = Path(output)
    seeds = list(range(s["n_captions"]))
    order = [(im, k) for im in images for k in seeds]
    want = [f"{im['key']}/s{k}" for im, k in order]
    if len(set(want)) != len(want):
        raise ValueError("duplicate image keys in the caption list")
    if _complete(output, want, shash):
        log.info("%s is complete (%d captions); nothing to do", output, len(want))
        return output
    ckpt = Checkpoint(str(output) + ".partial", shash)
    done = ckpt.load()
    todo = [(im, k) for im, k in order if f"{im['key']}/s{k}" not in done]
    if done:
        log.info("resuming %s: %d of %d captions done", output, len(want) - len(todo), len(want))
    if todo:
        if generate_fn is None:
            from vcdflow.decoding import generate as generate_fn
        from vcdflow.decoding import Request

        if callable(vlm) and not hasattr(vlm, "adapter"):
            vlm = vlm()
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(order),
            initial=len(order) - len(todo),
            desc=f"captions {model}",
            unit="caption",
            disable=not progress,
        )
        ckpt.open()
        try:
            for k in seeds:
                group = [im for im, kk in todo if kk == k]
                for start in range(0, len(group), batch_size):
                    batch = group[start : start + batch_size]
                    reqs = [
                        Request(
                            image=im["image_path"],
                            prompt=s["prompt"],
                            item_id=caption_item_id(model, im["key"]),
                        )
                        for im in batch
                    ]
                    outs = generate_fn(
                        vlm,
                        reqs,
                        method="sample",
                        do_sample=True,
                        temperature=s["temperature"],
                        top_p=s["top_p"],
                        max_new_tokens=s["max_new_tokens"],
                        seed=k,
                        batch_size=len(reqs),
                    )
                    recs = []
                    for im, out in zip(batch, outs):
                        raw = "" if out.error else (out.text or "")
                        recs.append(
                            {
                                "item_id": f"{im['key']}/s{k}",
                                "key": im["key"],
                                "image": im.get("image"),
                                "image_id": im.get("image_id"),
                                "image_path": im["image_path"],
                                "caption_seed": k,
                                "caption": clean_caption(raw, s["drop_unk_sentences"]),
                                "raw": raw,
                                "model": model,
                                "error": out.error,
                                "n_tokens": len(out.token_ids or []),
                                "settings_hash": shash,
                            }
                        )
                    ckpt.append(recs)
                    bar.update(len(batch))
        finally:
            ckpt.close()
            bar.close()
    records = ckpt.finish(output, want)
    n_err = sum(1 for r in records if r.get("error"))
    if n_err:
        log.warning(
            "%s: %d of %d captions failed (the reconstruction step names them)", output, n_err, len(records)
        )
    return output


def read_captions(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """Concatenate caption shard files (in the given order)."""
    out: list[dict] = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"caption file {p} is missing")
        out.extend(read_jsonl(p))
    return out


from ..gpu import resolve_device  # noqa: E402  (re-exported: vcdflow.t2i.captions.resolve_device)


def benchmark_images(benches: Sequence[dict]) -> list[dict]:
    """Distinct images of the items of every split in ``benches`` (``bench_config`` slices, the
    ones :func:`vcdflow.runner.load_items` reads), in split order then item order."""
    from vcdflow.runner import load_items

    items: list[dict] = []
    for bench in benches:
        items.extend(load_items(bench, {}))
    return convis_images(items)


def run_caption_shard(
    benches: Sequence[dict],
    model: dict,
    settings: dict,
    output: str | os.PathLike,
    *,
    shard: int = 0,
    n_shards: int = 1,
    device: str = "auto",
    batch_size: int | None = None,
    progress: bool = True,
) -> Path:
    """Workflow entry: caption shard ``shard``/``n_shards`` of a benchmark's distinct images.

    ``model``: the workflow's model slice (``name``, ``path``, ``dtype``, ``batch_size``); the VLM
    is loaded only if something is left to caption."""
    from vcdflow.runner import shard_slice

    images = shard_slice(benchmark_images(benches), int(shard), int(n_shards))

    def load():
        from vcdflow.models import load_vlm

        return load_vlm(model["path"], device=resolve_device(device), dtype=model.get("dtype", "float32"))

    bs = int(batch_size or settings.get("batch_size") or model.get("batch_size", 8))
    return caption_images(
        load, images, output, model=model["name"], settings=settings, batch_size=bs, progress=progress
    )
