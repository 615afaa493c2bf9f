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
from typing import Any, Callable

from .checkpoint import Checkpoint  # noqa: F401  (public name kept: vcdflow.runner.Checkpoint)
from .io import atomic_path, config_hash, dumps

log = logging.getLogger("vcdflow.runner")

# Keys of the run dict that say how it runs, not what it gives (vcdflow.config.Execution).
_NON_RESULT_KEYS = ("device", "threads", "gpu_lock_dir", "execution")
_NON_RESULT_MODEL_KEYS = ("batch_size",)


def result_hash(run: dict) -> str:
    """Hash of everything that decides the records of a result file: the
    :class:`vcdflow.config.RunSpec` part of ``run`` (execution settings dropped)."""
    slim = {k: v for k, v in run.items() if k not in _NON_RESULT_KEYS}
    slim["model"] = {k: v for k, v in run["model"].items() if k not in _NON_RESULT_MODEL_KEYS}
    slim["benchmark"] = {k: v for k, v in run["benchmark"].items() if k not in ("n_shards", "build")}
    return config_hash(slim)


# --------------------------------------------------------------------------- items


def load_items(bench: dict, inputs: dict | None = None) -> list[dict]:
    """Items of one benchmark split, in a fixed order: the registry entry's loader
    (:mod:`vcdflow.benchmarks`; ``kind`` or ``name`` picks it, ``pope_gqa`` is POPE)."""
    from .benchmarks import get_benchmark

    return get_benchmark(bench.get("kind") or bench["name"]).load_items(bench)


def seeded_subset(
    items: list, n: int | None, *, label: str, group: Callable[[dict], Any] | None = None
) -> list:
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
    name, kind = bench["name"], bench.get("kind") or bench["name"]
    if (run.get("protocol") or {}).get("protocol", "unified") != "unified":
        return prompt  # a paper protocol's prompt is the paper's: no config suffixes

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


def _preprocess(image, how: str | None, vlm):
    """The protocol's image preprocessing (``pad_square_mean``: LLaVA's expand2square with the
    processor's mean colour); ``processor``/None: the image as it is."""
    if not how or how == "processor":
        return image
    from .protocols import preprocess_image

    proc = getattr(vlm, "processor", None)
    mean = getattr(getattr(proc, "image_processor", proc), "image_mean", None)
    return preprocess_image(image, how, mean)


def _record(
    run: dict,
    item: dict,
    prompt: str,
    answer: str,
    error: str | None,
    meta: dict,
    seconds: float,
    new_tokens: int,
) -> dict:
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
    protocol = run.get("protocol") or {}
    system = protocol.get("system")
    how = protocol.get("image_preprocess")
    template = protocol.get("chat_template")
    adapter = getattr(vlm, "adapter", None)
    if template and adapter is not None and hasattr(adapter, "chat_template"):
        # the protocol's conversation template (a shipped one), or "model": the processor's own
        adapter.chat_template = None if template == "model" else template
    from .decoding import get_method

    # item fields the method reads as request prompts (LQCD on leading-query POPE: the neutral
    # question is the prompt, the leading one its contrast prompt); each through the same template
    the_method = get_method(method["method"])
    item_prompts = dict(getattr(the_method, "item_prompts", {}) or {})
    # the method's contrastive input from the item (cid, contrast: ``item_contrast``, Request field
    # -> item key): a question through the same template, an image file resolved, loaded and
    # preprocessed like the item's own (``<key>_path``, set by the loader); the item needs one of them
    item_contrast = dict(the_method.item_contrast)
    requests, slots, records = [], [], [None] * len(items)
    for i, item in enumerate(items):
        from_item = {}
        if item_prompts and all(item.get(key) is not None for key in item_prompts.values()):
            from_item = {
                field: build_prompt(run, {**item, "question": item[key]})
                for field, key in item_prompts.items()
            }
        prompt = from_item.pop("prompt", None) or build_prompt(run, item)
        extra = {"system": system} if system else {}
        extra.update(from_item)
        contrast = {key: item[key] for key in item_contrast.values() if item.get(key) is not None}
        if item_contrast and not contrast:
            keys = " and/or ".join(repr(k) for k in item_contrast.values())
            records[i] = _record(
                run,
                item,
                prompt,
                "",
                f"method {method['method']!r} needs the item key {keys} "
                f"(its contrastive input); item {item['item_id']} has none",
                {},
                0.0,
                0,
            )
            continue
        path, what = item.get("image_path"), "image"
        try:
            # an item without an image (HallusionBench's text-only questions) is a text-only request:
            # methods that need an image turn it into an error row naming the method
            image = (
                None if path is None and "image_path" in item else _preprocess(_load_image(path), how, vlm)
            )
            for path in item.get("contrast_images") or []:  # ConVis reconstructions
                extra.setdefault("contrast_images", []).append(_preprocess(_load_image(path), how, vlm))
            for field, key in item_contrast.items():
                if key not in contrast:
                    continue
                if field.endswith("image"):
                    path, what = item.get(f"{key}_path") or item[key], key
                    extra[field] = _preprocess(_load_image(path), how, vlm)
                else:
                    extra.setdefault(field, build_prompt(run, {**item, "question": item[key]}))
        except Exception as exc:  # noqa: BLE001 - any unreadable image becomes an error row
            records[i] = _record(
                run, item, prompt, "", f"{what} {path}: {type(exc).__name__}: {exc}", {}, 0.0, 0
            )
            continue
        requests.append(Request(image=image, prompt=prompt, item_id=item["item_id"], **extra))
        # the record's meta keeps the contrastive input used (the item's values)
        slots.append((i, prompt, {"contrast_input": contrast} if contrast else {}))
    if requests:
        # the decode step (execution setting "compile": off | static | on), passed only when set
        step = str((run.get("execution") or {}).get("compile", "off"))
        t0 = time.perf_counter()
        # the run records its warpers whatever the mode; generate takes them only when it samples
        sampling = (the_method.mode or ("sample" if method["do_sample"] else "greedy")) == "sample"
        outs = generate_fn(
            vlm,
            requests,
            method=method["method"],
            params=method.get("params", {}),
            do_sample=bool(method["do_sample"]) and the_method.mode != "greedy",
            temperature=method.get("temperature", 1.0) if sampling else 1.0,
            top_p=method.get("top_p", 1.0) if sampling else 1.0,
            top_k=method.get("top_k") if sampling else None,
            max_new_tokens=int(bench["max_new_tokens"]),
            seed=int(run["seed"]),
            batch_size=len(requests),
            # beam search: only a run whose record has one (num_beams > 1; vcdflow.config.build_run)
            **dict(method.get("search") or {}),
            **({"compile": step} if step != "off" else {}),
        )
        per_item = (time.perf_counter() - t0) / len(requests)
        for (i, prompt, used), out in zip(slots, outs):
            records[i] = _record(
                run,
                items[i],
                prompt,
                out.text if not out.error else "",
                out.error,
                {**dict(out.meta or {}), **used},
                per_item,
                len(out.token_ids or []),
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
        say(
            f"out of memory at batch size {len(items)}: retrying as two batches of "
            f"{len(items) // 2} and {len(items) - len(items) // 2}"
        )
        try:
            import torch

            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass
        half = len(items) // 2
        return decode_with_oom_retry(vlm, run, items[:half], generate_fn, say) + decode_with_oom_retry(
            vlm, run, items[half:], generate_fn, say
        )


def _attach_reconstructions(run: dict, items: list[dict], manifest: str) -> tuple[dict, list[dict]]:
    """ConVis: each item's n reconstructions become Request.contrast_images; the manifest's
    digest joins the run hash so a partial file never mixes two sets of reconstructions."""
    from .io import file_digest
    from .t2i import attach_reconstructions

    return dict(run, convis_manifest_digest=file_digest(manifest)), attach_reconstructions(items, manifest)


def _as_param(name: str, digest_key: str, digest_of: str | None = None) -> Callable:
    """An extra input that becomes the method parameter ``name`` (its path); the digest of the file
    (a folder: of ``digest_of`` inside it) joins the run hash as ``digest_key``."""

    def attach(run: dict, items: list[dict], path: str) -> tuple[dict, list[dict]]:
        from pathlib import Path

        from .io import stable_file_digest

        f = Path(path)
        target = f
        if f.is_dir():  # a model folder: its weights, else its config
            target = f / digest_of if digest_of and (f / digest_of).is_file() else f / "config.json"
        method = dict(run["method"], params={**(run["method"].get("params") or {}), name: str(f)})
        # a model's weights (gigabytes) are hashed once per process, not once per result
        return dict(run, method=method, **{digest_key: stable_file_digest(target)}), items

    return attach


def _attach_halc_aux(run: dict, items: list[dict], paths) -> tuple[dict, list[dict]]:
    """HALC: the three folders (detector, scorer, tagger, :func:`vcdflow.config._halc_aux`) become
    those parameters, each through :func:`_as_param` (digest of its weights, else its metadata);
    a config that sets one of them itself is refused (the workflow's folder is what runs)."""
    from pathlib import Path

    own = {
        k: v for k, v in (run["method"].get("params") or {}).items() if k in ("detector", "scorer", "tagger")
    }
    for name in own:
        if own[name] is not None:
            raise ValueError(
                f"method 'halc' in the workflow takes parameter {name!r} from its input folder "
                f"(resources/halc/...): remove params.{name} from the config entry"
            )
    for name, path in zip(("detector", "scorer", "tagger"), paths):
        if not Path(path).is_dir():
            raise FileNotFoundError(f"halc {name} folder missing: {path} (rule download_halc_aux fetches it)")
        weights = next(
            (
                w
                for w in ("model.safetensors", "pytorch_model.bin", "meta.json", "word_tags.json")
                if (Path(path) / w).is_file()
            ),
            None,
        )
        run, items = _as_param(name, f"halc_{name}_digest", weights)(run, items, path)
    return run, items


#: extra-input kind -> the method parameters that name it (``vcdflow decode --params``: the
#: user's paths become the run's inputs, checked and hashed like the workflow's)
INPUT_PARAMS: dict[str, tuple[str, ...]] = {
    "amateur_model": ("amateur",),
    "vti_directions": ("directions",),
    "halc_aux": ("detector", "scorer", "tagger"),
}

#: extra-input kind (vcdflow.config.METHOD_INPUTS, declared by the method) -> how it attaches
INPUT_ATTACHERS: dict[str, Callable] = {
    "convis_reconstructions": _attach_reconstructions,
    # text_cd: the amateur model folder is its ``amateur`` parameter (weights' digest in the hash)
    "amateur_model": _as_param("amateur", "amateur_digest", "model.safetensors"),
    # vti: the fitted directions file is its ``directions`` parameter
    "vti_directions": _as_param("directions", "vti_directions_digest"),
    # halc: the detector/scorer/tagger folders are its parameters of those names (weights' digests)
    "halc_aux": _attach_halc_aux,
}


def attach_method_inputs(run: dict, items: list[dict]) -> tuple[dict, list[dict]]:
    """Extra per-item inputs the method declares (``run["inputs"]``: kind -> file; ConVis: its
    reconstructions); returns the run (with the inputs' digests joining its hash) and the items."""
    inputs = dict(run.get("inputs") or {})
    if run.get("convis_manifest"):  # older run dicts
        inputs.setdefault("convis_reconstructions", run["convis_manifest"])
    for kind, path in sorted(inputs.items()):
        if kind not in INPUT_ATTACHERS:
            raise ValueError(f"unknown method input {kind!r}; known: {', '.join(sorted(INPUT_ATTACHERS))}")
        run, items = INPUT_ATTACHERS[kind](run, items, path)
    return run, items


def _by_image(items: list[dict], todo: list[dict]) -> list[dict]:
    """``todo`` stably sorted by image, images in their first-appearance order among ``items``
    (the shard), so a batch holds the questions of the same images. Computed over the whole
    shard, the order of what is left after a resume is the tail of the uninterrupted order:
    the same batches either way. The output file keeps the item order."""
    first: dict[Any, int] = {}
    for it in items:
        first.setdefault(it.get("image_path") or it.get("image"), len(first))
    return sorted(todo, key=lambda it: first[it.get("image_path") or it.get("image")])


def _peak_memory_mb(device: str) -> tuple[float | None, str]:
    """Peak memory of this process: CUDA ``max_memory_allocated`` on a GPU, else peak RSS."""
    if str(device).startswith("cuda"):
        try:
            import torch

            if torch.cuda.is_available() and torch.cuda.is_initialized():
                return round(torch.cuda.max_memory_allocated() / 2**20, 1), "cuda_max_memory_allocated"
        except Exception:  # noqa: BLE001
            pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "cpu_max_rss"


def _hardware(device: str) -> dict[str, Any]:
    import platform

    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine()
    gpu = None
    if str(device).startswith("cuda"):
        try:
            import torch

            if torch.cuda.is_available():
                gpu = torch.cuda.get_device_name(torch.device(device))
        except Exception:  # noqa: BLE001
            gpu = None
    return {"cpu": cpu, "gpu": gpu, "hardware": f"1x {gpu}" if gpu else f"CPU {cpu}"}


def _versions() -> dict[str, str | None]:
    """Python and the libraries that can change a decoded answer (:data:`vcdflow.envlock.RESULT_PACKAGES`)."""
    from .envlock import result_versions

    return result_versions()


def _lock_state() -> dict | None:
    """Whether this process runs in the locked environment (:func:`vcdflow.envlock.lock_state`)."""
    from .envlock import lock_state

    return lock_state()


def _model_source(run: dict) -> dict | None:
    """The hub repository and commit of the model folder (its ``.vcdflow-source.json``, written by
    the download); None for a folder placed by hand or built locally (the demo model)."""
    from .data.hub_revisions import read_source

    return read_source((run.get("model") or {}).get("path"))


def _git_commit() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the working directory's git checkout; (None, None) when it is none."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return head.stdout.strip() or None, (bool(status.stdout.strip()) if status.returncode == 0 else None)
    except (OSError, subprocess.SubprocessError):
        return None, None


def sidecar_path(output: str | os.PathLike) -> Path:
    """``<output without .jsonl>.meta.json`` (``seed0.jsonl`` → ``seed0.meta.json``)."""
    output = Path(output)
    stem = output.name[: -len(".jsonl")] if output.name.endswith(".jsonl") else output.name
    return output.with_name(stem + ".meta.json")


def _protocol_name(protocol: Any) -> str | None:
    """The protocol's name: the run's ``protocol`` entry (a resolved protocol dict carries it
    under ``protocol``/``name``), None when the run has none."""
    if isinstance(protocol, dict):
        protocol = protocol.get("protocol") or protocol.get("name")
    return str(protocol) if protocol else None


def _sidecar(
    run: dict,
    run_hash: str,
    output: Path,
    *,
    shard: int,
    n_shards: int,
    device: str,
    t0: float,
    n_resumed: int,
    records: list[dict],
    sha256: str,
) -> dict:
    peak, peak_kind = _peak_memory_mb(device)
    commit, dirty = _git_commit()
    errors_ = [r["item_id"] for r in records if r.get("error")]
    return {
        "output": output.name,
        "config_hash": run_hash,
        "result_sha256": sha256,
        "run": run,
        "protocol": run.get("protocol"),
        "protocol_name": _protocol_name(run.get("protocol")),
        "shard": shard,
        "n_shards": n_shards,
        "n_items": len(records),
        "n_decoded": len(records) - n_resumed,
        "n_resumed": n_resumed,
        "n_errors": len(errors_),
        "error_items": errors_[:20],
        "device": device,
        **_hardware(device),
        "peak_mem_mb": peak,
        "peak_mem_kind": peak_kind,
        "wall_seconds": round(time.monotonic() - t0, 3),
        "versions": _versions(),
        "environment_lock": _lock_state(),
        "model_source": _model_source(run),
        "git_commit": commit,
        "git_dirty": dirty,
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _summarise(output: Path, records: list[dict], n_resumed: int, side: Path) -> None:
    bad = [r["item_id"] for r in records if r.get("error")]
    if bad:
        first = ", ".join(bad[:5]) + (", …" if len(bad) > 5 else "")
        log.warning(
            "%s: %d of %d items are error rows (%s); their `error` field says why. To redo them, "
            "fix the inputs, delete %s and rerun",
            output,
            len(bad),
            len(records),
            first,
            output,
        )
    log.info(
        "wrote %s: %d records (%d decoded now, %d resumed), %d error rows; provenance in %s",
        output,
        len(records),
        len(records) - n_resumed,
        n_resumed,
        len(bad),
        side,
    )


def prepare_shard(
    run: dict,
    items: list[dict] | None = None,
    *,
    shard: int = 0,
    n_shards: int = 1,
    check_params: bool = True,
    check_model: bool = False,
) -> tuple[dict, list[dict]]:
    """Every check of a shard that needs neither the checkpoint nor the loaded model, cheap
    ones (no torch import) first: the benchmark's input paths, the items (a questions file that
    is not JSON or lacks a key), unique item ids, that some image exists, optionally the model
    folder (``check_model``), then the method parameters (``check_params``). Returns the run
    (with a method's extra-input digests) and the shard's items; a failure is one
    :class:`vcdflow.errors.UserError` line. ``vcdflow decode`` calls it before the model loads,
    :func:`run_shard` again under the output lock."""
    from . import validate
    from .errors import InputError

    bench = run["benchmark"]
    if items is None:
        validate.check_paths(bench)
        items = validate.load_items_checked(bench, lambda: load_items(bench, {}))
    items = shard_slice(items, shard, n_shards)
    validate.check_method_inputs(run.get("inputs") or {})  # an amateur, directions, helper models
    run, items = attach_method_inputs(run, items)
    ids = [it["item_id"] for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InputError(
            f"duplicate item_id {dup!r} in {bench['name']}/{bench['split']}; item ids must be "
            f"unique — fix the questions file"
        )
    from .decoding import get_method

    reads = get_method(run["method"]["method"]).item_contrast.values()
    validate.check_images(items, bench.get("images"), contrast_image="contrast_image" in reads)
    if check_model:
        validate.check_model(run["model"])
    if check_params:  # the engine's parameters (a custom generate_fn takes its own)
        method = run["method"]
        validate.check_params(method["method"], method.get("params"), where=f"method {method.get('label')!r}")
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
    """Decode shard ``shard``/``n_shards`` of ``run`` into ``output`` (resumable).

    In this order, so that bad input never costs checkpointed work: take ``<output>.lock``
    (a second writer fails at once, :class:`vcdflow.errors.OutputLocked`); remove temp files a
    killed final write left; check the method parameters, the input paths, the items, that
    some image exists, and load the model (each failure one :class:`vcdflow.errors.UserError`
    line) — all before ``<output>.partial`` is opened. Then resume from the partial file (one
    of another config is kept as ``<output>.partial.stale-<hash>``), decode what is left
    grouped by image (:func:`_by_image`), write ``output`` in item order and its provenance
    sidecar (:func:`sidecar_path`), and log the error rows."""
    from . import validate
    from .checkpoint import output_lock
    from .io import remove_leftover_tmp

    t0 = time.monotonic()
    output = Path(output)
    partial = Path(str(output) + ".partial")
    side = sidecar_path(output)
    with output_lock(output):
        removed = [p for dest in (output, partial, side) for p in remove_leftover_tmp(dest, any_writer=True)]
        if removed:
            log.info(
                "removed %d temp file(s) of an interrupted write: %s",
                len(removed),
                ", ".join(p.name for p in removed),
            )
        run, items = prepare_shard(
            run, items, shard=shard, n_shards=n_shards, check_params=generate_fn is None
        )
        ids = [it["item_id"] for it in items]
        run_hash = result_hash(run)
        ckpt = Checkpoint(partial, run_hash)
        old_hash, old_ids = ckpt.peek()  # read-only: the partial file stays as it is until all is checked
        reusable = old_ids if old_hash == run_hash else set()
        device = _device(run) if vlm is None else str(getattr(vlm, "device", run.get("device", "cpu")))
        if vlm is None and any(i not in reusable for i in ids):
            from .models import load_vlm

            model = run["model"]
            validate.check_model(model)
            vlm = load_vlm(model["path"], device=device, dtype=model.get("dtype", "float32"))
        if generate_fn is None and vlm is not None and any(i not in reusable for i in ids):
            _check_method_fits(run, vlm)  # parameters that fit no forward: the job fails, naming them
        done = ckpt.load()  # from here on the partial file may change (torn tail cut, stale kept)
        n_resumed = sum(1 for i in ids if i in done)
        todo = _by_image(items, [it for it in items if it["item_id"] not in done])
        if n_resumed:
            log.info("resuming %s: %d of %d items already decoded", output, n_resumed, len(items))
        if todo:
            if str(device).startswith("cuda"):
                try:
                    import torch

                    torch.cuda.reset_peak_memory_stats()
                except Exception:  # noqa: BLE001
                    pass
            bs = int(run["model"].get("batch_size", 16))
            ckpt.open()
            try:
                from tqdm.auto import tqdm

                bar = tqdm(
                    total=len(items),
                    initial=len(items) - len(todo),
                    disable=not progress,
                    desc=f"{run['benchmark']['name']}/{run['benchmark']['split']}/{run['method']['label']}",
                    unit="item",
                )
                for start in range(0, len(todo), bs):
                    batch = todo[start : start + bs]
                    ckpt.append(decode_with_oom_retry(vlm, run, batch, generate_fn))
                    bar.update(len(batch))
                bar.close()
            finally:
                ckpt.close()

        def write_sidecar(records: list[dict], sha256: str) -> None:
            from .io import write_json

            write_json(
                side,
                _sidecar(
                    run,
                    run_hash,
                    output,
                    shard=shard,
                    n_shards=n_shards,
                    device=device,
                    t0=t0,
                    n_resumed=n_resumed,
                    records=records,
                    sha256=sha256,
                ),
            )

        records = ckpt.finish(output, ids, after_write=write_sidecar)
        _summarise(output, records, n_resumed, side)
    return output


def _check_method_fits(run: dict, vlm) -> None:
    """The run's method parameters fit the loaded model (:func:`vcdflow.decoding.engine.method_misfit`):
    a misfit would make every item an error row, so it is an :class:`vcdflow.errors.InputError`
    naming the label, before anything is decoded or checkpointed."""
    from .decoding import get_method
    from .decoding.engine import method_misfit
    from .errors import InputError

    method = run["method"]
    m = get_method(method["method"])
    misfit = method_misfit(vlm, m, m.resolve(method.get("params") or {}))
    if misfit is not None:
        raise InputError(
            f"method {method.get('label')!r} does not fit model {run['model'].get('path')}: {misfit}; "
            f"fix its params (config methods.{method.get('label')}.params or --params) — nothing was "
            f"decoded"
        )


def _device(run: dict) -> str:
    from .gpu import resolve_device

    return resolve_device(run.get("device", "auto"))


def merge_sidecars(shards: list[str | os.PathLike], output: str | os.PathLike) -> dict:
    """One provenance sidecar for a merged result from its shards' sidecars: ``shards`` (each
    shard's own record), ``wall_seconds`` summed, ``peak_mem_mb`` the largest, ``hardware`` and
    ``device`` and ``versions`` the distinct values (a list only when shards differ), the item/error counts summed (``error_items``: the first 20
    over all shards), ``output`` and ``result_sha256`` those of the merged file, every other key
    from the first shard that has it (package versions, commit, protocol). Shards without a sidecar are listed under ``missing``."""
    metas, missing = [], []
    for shard in shards:
        path = sidecar_path(shard)
        if path.exists():
            metas.append(json.loads(path.read_text(encoding="utf-8")))
        else:
            missing.append(str(shard))
    merged: dict[str, Any] = {}
    for meta in metas:
        for key, value in meta.items():
            merged.setdefault(key, value)
    for key in ("wall_seconds", "wall_s", "seconds"):
        vals = [m[key] for m in metas if isinstance(m.get(key), (int, float))]
        if vals:
            merged[key] = round(sum(vals), 6)
    peaks = [m["peak_mem_mb"] for m in metas if isinstance(m.get("peak_mem_mb"), (int, float))]
    if peaks:
        merged["peak_mem_mb"] = max(peaks)
    for key in ("hardware", "device", "versions"):  # shards that differ: the distinct values, in shard order
        vals = list(
            dict.fromkeys(json.dumps(m[key], sort_keys=True) for m in metas if m.get(key) is not None)
        )
        if len(vals) > 1:
            merged[key] = [json.loads(v) for v in vals]
    for key in ("n_items", "n_decoded", "n_resumed", "n_errors"):  # counts over the whole result
        vals = [m[key] for m in metas if isinstance(m.get(key), int)]
        if vals:
            merged[key] = sum(vals)
    if any("error_items" in m for m in metas):
        merged["error_items"] = [i for m in metas for i in m.get("error_items") or []][:20]
    merged.pop("shard", None)
    merged["output"] = str(output)
    if Path(output).exists():  # the hash of the merged file, not of the first shard
        import hashlib

        merged["result_sha256"] = hashlib.sha256(Path(output).read_bytes()).hexdigest()
    merged["n_shards"] = len(shards)
    merged["shards"] = metas
    if missing:
        merged["missing"] = missing
    with atomic_path(sidecar_path(output)) as tmp:
        Path(tmp).write_text(
            json.dumps(merged, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8"
        )
    return merged


def merge_shards(
    shards: list[str | os.PathLike],
    output: str | os.PathLike,
    meta: dict | None = None,
    *,
    seed: int | None = None,
) -> Path:
    """Concatenate shard files (already in item order) into the final result file and merge
    their provenance sidecars into ``<result>.meta.json`` (:func:`merge_sidecars`).

    ``seed``: the result's seed when the shards were decoded under another one (a greedy method
    with no random draw, decoded once for every seed): each record's ``seed`` is set to it and
    the sidecar says ``decoded_seed``."""
    output = Path(output)
    decoded = set()
    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for shard in shards:
            with open(shard, encoding="utf-8") as fh:
                for line in fh:
                    if not line.strip():
                        continue
                    if seed is not None:
                        rec = json.loads(line)
                        decoded.add(rec.get("seed"))
                        if rec.get("seed") != seed:
                            rec["seed"] = seed
                            line = dumps(rec)
                    out.write(line if line.endswith("\n") else line + "\n")
    merged = merge_sidecars(shards, output)
    if seed is not None and decoded - {seed}:
        merged["decoded_seed"] = sorted(decoded)[0]
        merged["seed"] = seed
        merged["note"] = (
            f"greedy with no random draw: decoded once under seed {merged['decoded_seed']} "
            f"and recorded for seed {seed}"
        )
        with atomic_path(sidecar_path(output)) as tmp:
            Path(tmp).write_text(
                json.dumps(merged, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8"
            )
    return output


def shard_is_current(run: dict, output: str | os.PathLike) -> bool:
    """True when ``output`` is a finished shard of exactly ``run``: the file and its sidecar exist,
    the sidecar's ``config_hash`` is the run's (method-input digests included) and its
    ``result_sha256`` is the file's. A grouped decode job skips such shards after a restart."""
    import hashlib

    output = Path(output)
    side = sidecar_path(output)
    if not (output.exists() and side.exists()):
        return False
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    run, _ = attach_method_inputs(run, [])
    return (
        meta.get("config_hash") == result_hash(run)
        and meta.get("result_sha256") == hashlib.sha256(output.read_bytes()).hexdigest()
    )


def decode_group(
    jobs: list[dict], *, vlm=None, progress: bool = True, say: Callable = log.info
) -> list[Path]:
    """Decode several results of one model in one process, the model loaded once (the workflow's
    ``group_decode``: one job per batch of results of one model and protocol).

    ``jobs``: ``{"run": run dict, "shards": [shard path, ...], "results": [[result path, seed],
    ...]}`` in order (``"shard": path`` is one shard). Shard ``i`` of ``n`` of each run is
    decoded into its file by :func:`run_shard` — the same locking, per-batch checkpoint and
    resume, sidecar as a per-shard job — unless :func:`shard_is_current` says it is already
    there (a restarted job skips what it finished); then :func:`merge_shards` writes each of its
    result files from all its shards (a seed-free greedy run is decoded once and recorded for
    every seed, as in the per-shard workflow). Returns the result paths."""
    out: list[Path] = []
    for job in jobs:
        run = job["run"]
        shards = job["shards"] if "shards" in job else [job["shard"]]
        for i, shard in enumerate(shards):
            if shard_is_current(run, shard):
                say(f"{shard}: up to date, not decoded again")
                continue
            if vlm is None:
                from . import validate
                from .models import load_vlm

                model = run["model"]
                validate.check_model(model)
                vlm = load_vlm(model["path"], device=_device(run), dtype=model.get("dtype", "float32"))
            run_shard(run, shard, shard=i, n_shards=len(shards), vlm=vlm, progress=progress)
        for path, seed in job["results"]:
            out.append(merge_shards(shards, path, seed=int(seed)))
    return out


def describe(run: dict) -> dict[str, Any]:
    return {"config_hash": result_hash(run), "run": run}
