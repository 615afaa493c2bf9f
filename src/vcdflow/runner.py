"""Decode one shard of a benchmark: items -> requests -> ``generate`` -> result JSONL.

The shard checkpoints after every batch: completed records are appended to
``<output>.partial`` (flush + fsync), the first line of which holds the hash of the run's
config slice. A rerun after a kill resumes from it — no finished item is lost or decoded
twice, at most the batch in flight is recomputed — unless the config changed, in which case
the stale partial file is discarded (never mixing two configs in one file). The final file is
written atomically in item order and the partial file removed.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from .checkpoint import Checkpoint  # noqa: F401  (public name kept: vcdflow.runner.Checkpoint)
from .io import atomic_path, config_hash, dumps

log = logging.getLogger("vcdflow.runner")

# Keys of the run config that do not change results (and so do not enter the hash).
_NON_RESULT_KEYS = ("device", "threads", "gpu_lock_dir")
_NON_RESULT_MODEL_KEYS = ("batch_size",)


def result_hash(run: dict) -> str:
    """Hash of everything that determines the records of a result file."""
    slim = {k: v for k, v in run.items() if k not in _NON_RESULT_KEYS}
    slim["model"] = {k: v for k, v in run["model"].items() if k not in _NON_RESULT_MODEL_KEYS}
    slim["benchmark"] = {k: v for k, v in run["benchmark"].items() if k != "n_shards"}
    return config_hash(slim)


# --------------------------------------------------------------------------- items


def load_items(bench: dict, inputs: dict) -> list[dict]:
    """Items of one benchmark split, in a fixed order (see the metrics modules)."""
    name = bench.get("kind", bench["name"])
    if name == "pope":
        from .metrics import pope

        items = pope.load_items(bench["questions"], bench["images"], split=bench["split"])
        return seeded_subset(items, bench.get("n_questions"), label=f"pope-subset-{bench['split']}")
    if name == "chair":
        from .metrics import chair

        return chair.load_items(
            bench["captions"],
            bench["images"],
            n=bench.get("n_images", 500),
            seed=bench.get("subset_seed", 0),
            id_list=bench.get("image_ids"),
            prompt=bench.get("prompt", chair.DEFAULT_PROMPT),
        )
    if name == "mme":
        from .metrics import mme

        prepared = Path(bench["root"]) / "items.jsonl"  # written by rule prepare_mme (parquet source)
        if prepared.exists():
            from .io import read_jsonl

            items = read_jsonl(prepared)
            wanted = bench.get("subtasks")
            items = [it for it in items if not wanted or it.get("subtask") in wanted]
        else:
            items = mme.load_items(bench["root"], subtasks=bench.get("subtasks"))
        n = bench.get("n_images")
        if not n:
            return items
        # per subtask, n images with both their questions (acc+ is per image), file order kept
        subtasks = list(dict.fromkeys(it["subtask"] for it in items))
        keep = {id(it) for sub in subtasks
                for it in seeded_subset([it for it in items if it["subtask"] == sub], n,
                                        label=f"mme-subset-{sub}", group=lambda it: it["image_id"])}
        return [it for it in items if id(it) in keep]
    if name == "amber":
        from .metrics import amber

        root = Path(bench["root"])
        items = amber.load_items(
            root / "data" / "query" / f"query_{bench['split']}.json", root / "data" / "annotations.json", root / "image"
        )
        return seeded_subset(items, bench.get("n_items"), label=f"amber-subset-{bench['split']}")
    raise ValueError(f"unknown benchmark {name!r}; valid: pope, chair, mme, amber")


def seeded_subset(items: list, n: int | None, *, label: str, group: Callable[[dict], Any] | None = None) -> list:
    """``n`` groups of ``items`` drawn with ``random.Random(label)`` (string seeds are stable across
    Python versions and platforms), returned in file order; ``group`` keeps items together (MME:
    the two questions of an image); None or ``n`` ≥ the number of groups = everything.
    POPE uses ``n_questions`` (label ``pope-subset-<split>``), MME ``n_images`` per subtask
    (``mme-subset-<subtask>``), AMBER ``n_items`` (``amber-subset-<task>``)."""
    if not n:
        return items
    key = group or (lambda it: it["item_id"])
    groups = list(dict.fromkeys(key(it) for it in items))
    if n >= len(groups):
        return items
    picked = {groups[i] for i in random.Random(label).sample(range(len(groups)), n)}
    return [it for it in items if key(it) in picked]


def shard_slice(items: list, shard: int, n_shards: int) -> list:
    """Contiguous, balanced chunk ``shard`` of ``n_shards`` (concatenation = the whole list)."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} out of range for {n_shards} shards")
    n = len(items)
    start = (n * shard) // n_shards
    stop = (n * (shard + 1)) // n_shards
    return items[start:stop]


def build_prompt(run: dict, item: dict) -> str:
    bench, model, method = run["benchmark"], run["model"], run["method"]
    template = bench.get("prompt") or "{question}"
    prompt = template.format(question=item.get("question", ""))
    name, kind = bench["name"], bench.get("kind", bench["name"])

    def lookup(suffixes):  # the benchmark's own key (pope_gqa) first, then its kind (pope)
        return suffixes.get(name, suffixes.get(kind))

    suffix = lookup(method.get("prompt_suffix", {}))
    if suffix is None:
        suffix = lookup(model.get("prompt_suffix", {})) or ""
    return prompt + suffix


# --------------------------------------------------------------------------- decoding


def _load_image(path: str):
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def _record(run: dict, item: dict, prompt: str, answer: str, error: str | None, meta: dict, seconds: float, new_tokens: int) -> dict:
    return {
        "item_id": item["item_id"],
        "image": item.get("image"),
        "image_id": item.get("image_id"),
        "question_id": item.get("question_id"),
        "prompt": prompt,
        "answer": answer,
        "label": item.get("label"),
        "seed": run["seed"],
        "error": error,
        "meta": meta or {},
        "timing": {"seconds": round(seconds, 6), "new_tokens": int(new_tokens)},
    }


def decode_batch(vlm, run: dict, items: list[dict], generate_fn: Callable | None = None) -> list[dict]:
    """Decode a batch of items; bad items become error records, never exceptions."""
    from .decoding import Request, generate

    generate_fn = generate_fn or generate
    method = run["method"]
    bench = run["benchmark"]
    requests, slots, records = [], [], [None] * len(items)
    for i, item in enumerate(items):
        prompt = build_prompt(run, item)
        extra = {}
        path = item.get("image_path")
        try:
            image = _load_image(path)
            for path in item.get("contrast_images") or []:  # ConVis reconstructions
                extra.setdefault("contrast_images", []).append(_load_image(path))
        except Exception as exc:  # noqa: BLE001 - any unreadable image becomes an error row
            records[i] = _record(run, item, prompt, "", f"image {path}: {type(exc).__name__}: {exc}", {}, 0.0, 0)
            continue
        requests.append(Request(image=image, prompt=prompt, item_id=item["item_id"], **extra))
        slots.append((i, prompt))
    if requests:
        t0 = time.perf_counter()
        outs = generate_fn(
            vlm,
            requests,
            method=method["method"],
            params=method.get("params", {}),
            do_sample=method["do_sample"],
            temperature=method.get("temperature", 1.0),
            top_p=method.get("top_p", 1.0),
            top_k=method.get("top_k"),
            max_new_tokens=int(bench["max_new_tokens"]),
            seed=int(run["seed"]),
            batch_size=len(requests),
        )
        per_item = (time.perf_counter() - t0) / len(requests)
        for (i, prompt), out in zip(slots, outs):
            records[i] = _record(
                run, items[i], prompt, out.text if not out.error else "", out.error,
                dict(out.meta or {}), per_item, len(out.token_ids or []),
            )
    return records


def _is_oom(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except Exception:  # noqa: BLE001
        pass
    return "out of memory" in str(exc).lower()


def decode_with_oom_retry(vlm, run, items, generate_fn=None, say=log.info) -> list[dict]:
    """Decode ``items``; on a CUDA out-of-memory error halve the batch and retry both halves."""
    try:
        return decode_batch(vlm, run, items, generate_fn)
    except Exception as exc:  # noqa: BLE001
        if not _is_oom(exc) or len(items) == 1:
            raise
        say(f"out of memory at batch size {len(items)}: retrying as two batches of "
            f"{len(items) // 2} and {len(items) - len(items) // 2}")
        try:
            import torch

            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass
        half = len(items) // 2
        return decode_with_oom_retry(vlm, run, items[:half], generate_fn, say) + decode_with_oom_retry(
            vlm, run, items[half:], generate_fn, say
        )


def attach_method_inputs(run: dict, items: list[dict]) -> tuple[dict, list[dict]]:
    """Extra per-item inputs a method needs (ConVis: its reconstructions); returns the run (with
    the inputs' digest joining its hash) and the items."""
    if run["method"].get("method") == "convis" and run.get("convis_manifest"):
        # ConVis: each item's n reconstructions become Request.contrast_images; the manifest's
        # digest joins the run hash so a partial file never mixes two sets of reconstructions.
        from .io import file_digest
        from .t2i import attach_reconstructions

        items = attach_reconstructions(items, run["convis_manifest"])
        run = dict(run, convis_manifest_digest=file_digest(run["convis_manifest"]))
    return run, items


def run_shard(
    run: dict,
    output: str | os.PathLike,
    *,
    shard: int = 0,
    n_shards: int = 1,
    items: list[dict] | None = None,
    vlm=None,
    generate_fn: Callable | None = None,
    progress: bool = True,
) -> Path:
    """Decode shard ``shard``/``n_shards`` of ``run`` into ``output`` (resumable)."""
    output = Path(output)
    if items is None:
        items = load_items(run["benchmark"], {})
    items = shard_slice(items, shard, n_shards)
    run, items = attach_method_inputs(run, items)
    ids = [it["item_id"] for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"duplicate item_id {dup!r} in {run['benchmark']['name']}/{run['benchmark']['split']}")
    run_hash = result_hash(run)
    ckpt = Checkpoint(str(output) + ".partial", run_hash)
    done = ckpt.load()
    todo = [it for it in items if it["item_id"] not in done]
    if done:
        log.info("resuming %s: %d of %d items already decoded", output, len(done), len(items))
    if todo:
        if vlm is None:
            from .models import load_vlm

            model = run["model"]
            vlm = load_vlm(model["path"], device=_device(run), dtype=model.get("dtype", "float32"))
        bs = int(run["model"].get("batch_size", 16))
        ckpt.open()
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), initial=len(items) - len(todo), disable=not progress,
                       desc=f"{run['benchmark']['name']}/{run['benchmark']['split']}/{run['method']['label']}", unit="item")
            for start in range(0, len(todo), bs):
                batch = todo[start:start + bs]
                ckpt.append(decode_with_oom_retry(vlm, run, batch, generate_fn))
                bar.update(len(batch))
            bar.close()
        finally:
            ckpt.close()
    ckpt.finish(output, ids)
    return output


def _device(run: dict) -> str:
    from .gpu import resolve_device

    return resolve_device(run.get("device", "auto"))


def merge_shards(shards: list[str | os.PathLike], output: str | os.PathLike, meta: dict | None = None) -> Path:
    """Concatenate shard files (already in item order) into the final result file."""
    output = Path(output)
    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for shard in shards:
            with open(shard, encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        out.write(line if line.endswith("\n") else line + "\n")
    return output


def describe(run: dict) -> dict[str, Any]:
    return {"config_hash": result_hash(run), "run": run}
